//! `roles = [...]`: what one process runs. Every role is in the same binary and reads the same
//! file; an all-in-one process is every role at once.

use std::fmt;

/// One role of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Serves viewers: the listeners of `[server]`, the policy chains, the cache tiers, the
    /// streaming API and the event spool.
    Edge,
    /// Serves `seeder.cache_path` to edges on `seeder.listen` and publishes it in the Redis
    /// directory.
    Seeder,
    /// WebSocket signaling for P2P-assisted delivery and watch rooms: the WebTorrent tracker
    /// (`signaling.tracker_path`) and the native protocol (`signaling.path`), behind the policy
    /// chains of their routes. With the edge role on its viewer listeners beside the media;
    /// alone, the viewer listeners serve only the endpoints and `/health`.
    Signaling,
}

impl Role {
    /// Every role, in the order they start.
    pub const ALL: &[Role] = &[Role::Edge, Role::Seeder, Role::Signaling];

    /// The name used in the file, the environment and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Seeder => "seeder",
            Role::Signaling => "signaling",
        }
    }

    /// Parses one name; `all` is not a role (see [`Roles::parse`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The roles of a process: a non-empty set, kept in start order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(Vec<Role>);

impl Default for Roles {
    fn default() -> Self {
        Self(vec![Role::Edge])
    }
}

impl Roles {
    /// Exactly `roles` (sorted, duplicates removed).
    pub fn of(roles: impl IntoIterator<Item = Role>) -> Self {
        let mut v: Vec<Role> = roles.into_iter().collect();
        v.sort();
        v.dedup();
        Self(v)
    }

    /// Parses names as written in the file or on the command line: each a role's name, or `all`.
    /// Returns every problem (unknown names, duplicates, an empty list) as one message each.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, Vec<String>> {
        // Names listed (a name twice is a mistake); `all` overlaps with any of them, as a set.
        let mut named = Vec::new();
        let mut roles = Vec::new();
        let mut problems = Vec::new();
        for name in names.iter().map(AsRef::as_ref) {
            match (name, Role::from_name(name)) {
                ("all", _) => roles.extend_from_slice(Role::ALL),
                (_, Some(r)) if named.contains(&r) => {
                    problems.push(format!("{name:?} is listed twice"));
                }
                (_, Some(r)) => {
                    named.push(r);
                    roles.push(r);
                }
                (_, None) => problems.push(format!(
                    "unknown role {name:?}; the roles are {} (or \"all\")",
                    Role::ALL
                        .iter()
                        .map(|r| format!("{:?}", r.name()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        if names.is_empty() {
            problems.push("must name at least one role".to_owned());
        }
        if problems.is_empty() {
            Ok(Self::of(roles))
        } else {
            Err(problems)
        }
    }

    /// Whether `role` runs.
    pub fn has(&self, role: Role) -> bool {
        self.0.contains(&role)
    }

    /// Adds `role`.
    pub fn add(&mut self, role: Role) {
        if !self.has(role) {
            self.0.push(role);
            self.0.sort();
        }
    }

    /// The roles, in start order.
    pub fn iter(&self) -> impl Iterator<Item = Role> + '_ {
        self.0.iter().copied()
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Role::name).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_into_a_sorted_set() {
        assert_eq!(
            Roles::parse(&["seeder", "edge"]).unwrap(),
            Roles::of([Role::Edge, Role::Seeder])
        );
        assert_eq!(
            Roles::parse(&["all"]).unwrap(),
            Roles::of(Role::ALL.iter().copied())
        );
        let problems = Roles::parse(&["edge", "edge", "cdn"]).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[1].contains("\"edge\", \"seeder\""), "{problems:?}");
        assert!(Roles::parse::<&str>(&[]).is_err());
        // `all` overlaps with the names, in any order.
        for names in [["all", "edge"], ["edge", "all"], ["all", "all"]] {
            assert_eq!(
                Roles::parse(&names).unwrap(),
                Roles::parse(&["all"]).unwrap()
            );
        }
    }
}
