//! Routes and chains: which policies run for a path, and how their decisions combine.

use crate::{Deployment, Error};
use edge_config::{FailMode, RouteSpec};
use edge_wit::types::{Decision, Request};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::{collections::HashMap, net::IpAddr, sync::Arc};

/// What the chain needs to know about a request, independent of the protocol it came in on.
#[derive(Debug, Clone)]
pub struct RequestInfo<'a> {
    /// Upper-case method.
    pub method: &'a str,
    /// Normalised, decoded path.
    pub path: &'a str,
    /// Raw query string without `?`.
    pub query: &'a str,
    /// All request headers; each policy sees only those it selected.
    pub headers: &'a http::HeaderMap,
    /// The viewer's address.
    pub client_addr: IpAddr,
}

/// The combined verdict of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every policy allowed (or failed open).
    Allow {
        /// Headers to add to the response.
        response_headers: Vec<(String, String)>,
        /// Query parameters to propagate into manifest URIs.
        propagate_query: Vec<(String, String)>,
        /// Context accumulated along the chain.
        context: Vec<(String, String)>,
    },
    /// A policy denied, or failed closed.
    Deny {
        /// The policy that decided.
        policy: String,
        /// 4xx/5xx status.
        status: u16,
        /// Short machine-readable reason.
        reason: String,
        /// Headers for the error response.
        headers: Vec<(String, String)>,
    },
    /// A policy redirected.
    Redirect {
        /// The policy that decided.
        policy: String,
        /// 3xx status.
        status: u16,
        /// Target.
        location: String,
    },
}

/// A route and its policy chain.
#[derive(Debug)]
pub struct Route {
    name: String,
    chain: Vec<Arc<Deployment>>,
}

impl Route {
    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether no policy guards this route.
    pub fn is_open(&self) -> bool {
        self.chain.is_empty()
    }

    /// Runs the chain in order. The first deny or redirect ends it.
    pub async fn run(&self, req: &RequestInfo<'_>) -> Outcome {
        self.run_with_context(req, Vec::new()).await
    }

    /// Runs the chain as if earlier policies had already left `context` (the policy author kit
    /// seeds it from a fixture); an allow's context starts from it.
    pub async fn run_with_context(
        &self,
        req: &RequestInfo<'_>,
        mut context: Vec<(String, String)>,
    ) -> Outcome {
        let mut response_headers = Vec::new();
        let mut propagate_query = Vec::new();
        for deployment in &self.chain {
            let policy = deployment.baseline();
            let request = Request {
                method: req.method.to_owned(),
                path: req.path.to_owned(),
                query: req.query.to_owned(),
                headers: selected_headers(req.headers, policy.headers()),
                client_addr: req.client_addr.to_string(),
                route: self.name.clone(),
                context: context.clone(),
            };
            let decision = deployment.decide(&request).await;
            match decision {
                Ok(Decision::Allow(a)) => {
                    policy.handles.allow.inc();
                    response_headers.extend(a.response_headers);
                    propagate_query.extend(a.propagate_query);
                    for (k, v) in a.context {
                        context.retain(|(old, _)| *old != k);
                        context.push((k, v));
                    }
                }
                Ok(Decision::Deny(d)) => {
                    policy.handles.deny.inc();
                    return Outcome::Deny {
                        policy: policy.name().to_owned(),
                        status: d.status,
                        reason: d.reason,
                        headers: d.headers,
                    };
                }
                Ok(Decision::Redirect(r)) => {
                    policy.handles.redirect.inc();
                    return Outcome::Redirect {
                        policy: policy.name().to_owned(),
                        status: r.status,
                        location: r.location,
                    };
                }
                Err(failure) => match policy.fail_mode() {
                    FailMode::Open => {
                        policy.handles.fail_open.inc();
                        tracing::warn!(policy = policy.name(), route = %self.name, %failure, "policy failed open");
                    }
                    FailMode::Closed => {
                        policy.handles.fail_closed.inc();
                        tracing::warn!(policy = policy.name(), route = %self.name, %failure, "policy failed closed");
                        return Outcome::Deny {
                            policy: policy.name().to_owned(),
                            status: policy.fail_status(),
                            reason: format!("policy_{}", failure.kind()),
                            headers: Vec::new(),
                        };
                    }
                },
            }
        }
        Outcome::Allow {
            response_headers,
            propagate_query,
            context,
        }
    }
}

fn selected_headers(headers: &http::HeaderMap, names: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in names {
        for v in headers.get_all(name.as_str()) {
            if let Ok(v) = v.to_str() {
                out.push((name.clone(), v.to_owned()));
            }
        }
    }
    out
}

/// Maps paths to routes. Routes are tried in file order.
#[derive(Debug)]
pub struct Router {
    set: GlobSet,
    /// For each glob (in set order), the index of its route.
    owner: Vec<usize>,
    routes: Vec<Route>,
    deployments: Vec<Arc<Deployment>>,
}

impl Router {
    pub(crate) fn new(
        specs: &[RouteSpec],
        policies: &HashMap<String, Arc<Deployment>>,
    ) -> Result<Self, Error> {
        let mut builder = GlobSetBuilder::new();
        let mut owner = Vec::new();
        let mut routes = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            for p in &spec.paths {
                let glob = GlobBuilder::new(p)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| Error::Route {
                        route: spec.name.clone(),
                        reason: e.to_string(),
                    })?;
                builder.add(glob);
                owner.push(i);
            }
            let chain = spec
                .chain
                .iter()
                .map(|n| {
                    policies.get(n).cloned().ok_or_else(|| Error::Route {
                        route: spec.name.clone(),
                        reason: format!("unknown policy {n:?}"),
                    })
                })
                .collect::<Result<_, _>>()?;
            routes.push(Route {
                name: spec.name.clone(),
                chain,
            });
        }
        let set = builder.build().map_err(|e| Error::Route {
            route: String::new(),
            reason: e.to_string(),
        })?;
        let mut deployments: Vec<Arc<Deployment>> = policies.values().cloned().collect();
        deployments.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(Self {
            set,
            owner,
            routes,
            deployments,
        })
    }

    /// Every loaded policy (bound to a route or not), by name.
    pub fn deployments(&self) -> &[Arc<Deployment>] {
        &self.deployments
    }

    /// The first route (in file order) with a pattern matching `path`.
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.set
            .matches(path)
            .into_iter()
            .map(|g| self.owner[g])
            .min()
            .map(|i| &self.routes[i])
    }

    /// All routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}
