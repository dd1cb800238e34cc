//! The ketama ring over the live seeders.
//!
//! `pingora-ketama` places nodes by socket address. A seeder's place must not move when it
//! restarts on another port, so each seeder enters the ring under a stable pseudo-address derived
//! from its id (SHA-256 of the id as an IPv6 address and port); the real address travels beside
//! it. Every edge builds the same ring from the same membership, so a path maps to the same seeder
//! everywhere.

use pingora_ketama::{Bucket, Continuum, DEFAULT_POINT_MULTIPLE};
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    net::{Ipv6Addr, SocketAddr},
};

/// A live seeder in the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// Seeder id (the ring key).
    pub(crate) id: String,
    /// Where it serves (`host:port`), from its heartbeat.
    pub(crate) address: String,
}

/// A consistent-hashing ring of seeders, immutable once built.
pub(crate) struct Ring {
    continuum: Continuum,
    members: Vec<Member>,
    /// Pseudo-address → index in `members`.
    index: HashMap<SocketAddr, usize>,
    /// Points on the continuum at most (one full turn).
    points: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// The ring key of seeder `id`: a pseudo socket address that depends on the id alone.
fn key(id: &str) -> SocketAddr {
    let digest = Sha256::digest(id.as_bytes());
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&digest[..16]);
    let port = u16::from_be_bytes([digest[16], digest[17]]);
    SocketAddr::from((Ipv6Addr::from(ip), port))
}

impl Ring {
    /// A ring over `members` (duplicated ids after the first are ignored).
    pub(crate) fn new(members: Vec<Member>) -> Self {
        let mut index = HashMap::with_capacity(members.len());
        let mut kept = Vec::with_capacity(members.len());
        for m in members {
            let k = key(&m.id);
            if index.contains_key(&k) || u16::try_from(kept.len()).is_err() {
                continue;
            }
            index.insert(k, kept.len());
            kept.push(m);
        }
        let buckets: Vec<Bucket> = kept.iter().map(|m| Bucket::new(key(&m.id), 1)).collect();
        Self {
            continuum: Continuum::new(&buckets),
            points: kept.len() * DEFAULT_POINT_MULTIPLE as usize,
            members: kept,
            index,
        }
    }

    /// The members, in the order they were given.
    pub(crate) fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether `id` is in the ring.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.index.contains_key(&key(id))
    }

    /// Every member once, in ring order from the hash of `path`: the owner first, then its
    /// successors (the failover order).
    pub(crate) fn walk<'a>(&'a self, path: &str) -> impl Iterator<Item = &'a Member> + 'a {
        let mut seen = vec![false; self.members.len()];
        let mut left = self.members.len();
        let mut points = self.continuum.node_iter(path.as_bytes()).take(self.points);
        std::iter::from_fn(move || {
            while left > 0 {
                let Some(&i) = self.index.get(points.next()?) else {
                    continue;
                };
                if !std::mem::replace(&mut seen[i], true) {
                    left -= 1;
                    return Some(&self.members[i]);
                }
            }
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[&str]) -> Ring {
        Ring::new(
            ids.iter()
                .map(|id| Member {
                    id: (*id).to_owned(),
                    address: format!("{id}.local:80"),
                })
                .collect(),
        )
    }

    fn order(r: &Ring, path: &str) -> Vec<String> {
        r.walk(path).map(|m| m.id.clone()).collect()
    }

    #[test]
    fn walks_every_member_once_from_a_stable_owner() {
        let r = ring(&["a", "b", "c", "d"]);
        for i in 0..50 {
            let path = format!("/vod/movies/m{i}/seg.ts");
            let o = order(&r, &path);
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(sorted, ["a", "b", "c", "d"], "{path}");
            assert_eq!(o, order(&r, &path));
        }
        assert_eq!(order(&ring(&[]), "/x"), Vec::<String>::new());
        assert_eq!(order(&ring(&["only"]), "/x"), ["only"]);
    }

    #[test]
    fn placement_depends_on_ids_not_addresses_or_order() {
        let a = ring(&["a", "b", "c"]);
        let b = Ring::new(vec![
            Member {
                id: "c".into(),
                address: "10.0.0.3:1".into(),
            },
            Member {
                id: "a".into(),
                address: "10.0.0.1:2".into(),
            },
            Member {
                id: "b".into(),
                address: "10.0.0.2:3".into(),
            },
        ]);
        for i in 0..50 {
            let path = format!("/p/{i}");
            assert_eq!(order(&a, &path), order(&b, &path));
        }
    }

    #[test]
    fn removing_a_member_only_moves_its_own_paths() {
        let full = ring(&["a", "b", "c", "d", "e"]);
        let less = ring(&["a", "b", "c", "e"]);
        let mut owners = HashMap::new();
        for i in 0..500 {
            let path = format!("/vod/movies/m/{i}.ts");
            let before = full.walk(&path).next().unwrap().id.clone();
            let after = less.walk(&path).next().unwrap().id.clone();
            if before != "d" {
                assert_eq!(before, after, "{path}");
            } else {
                // The next member in ring order takes over.
                assert_eq!(order(&full, &path)[1], after);
            }
            *owners.entry(before).or_insert(0) += 1;
        }
        // Every member owns a share of the paths.
        assert_eq!(owners.len(), 5, "{owners:?}");
        assert!(less.contains("a") && !less.contains("d"));
    }
}
