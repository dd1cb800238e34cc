use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// The user service of the streaming platform, as the subscription policy sees it:
/// `GET /api/v1/users/{user_id}/subscription` → 200 `{"active": bool}`, 404 for unknown users.
/// Tests script the answers, make it fail (500) or slow, and count the calls.
#[derive(Debug, Clone)]
pub struct UserService {
    addr: SocketAddr,
    state: Arc<State>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct State {
    users: Mutex<HashMap<String, bool>>,
    failing: Mutex<bool>,
    delay: Mutex<Duration>,
    hits: AtomicU64,
    last_authorization: Mutex<Option<String>>,
}

impl UserService {
    /// Starts on a free loopback port, on the current tokio runtime.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            task: Arc::new(task),
        }
    }

    /// Base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets a user's subscription; `None` makes the user unknown (404).
    pub fn set(&self, user: &str, active: Option<bool>) {
        let mut users = self.state.users.lock();
        match active {
            Some(a) => users.insert(user.to_owned(), a),
            None => users.remove(user),
        };
    }

    /// While `true`, every call answers 500.
    pub fn fail(&self, failing: bool) {
        *self.state.failing.lock() = failing;
    }

    /// Delays every answer.
    pub fn delay(&self, delay: Duration) {
        *self.state.delay.lock() = delay;
    }

    /// Calls answered so far.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// The `authorization` header of the last call.
    pub fn last_authorization(&self) -> Option<String> {
        self.state.last_authorization.lock().clone()
    }
}

impl Drop for UserService {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    *state.last_authorization.lock() = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let delay = *state.delay.lock();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let reply = |status: StatusCode, body: &str| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
        *r.status_mut() = status;
        r.headers_mut()
            .insert("content-type", "application/json".parse().expect("static"));
        Ok(r)
    };
    if *state.failing.lock() {
        return reply(StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"down"}"#);
    }
    let user = req
        .uri()
        .path()
        .strip_prefix("/api/v1/users/")
        .and_then(|rest| rest.strip_suffix("/subscription"));
    let known = user.and_then(|u| state.users.lock().get(u).copied());
    match known {
        Some(active) => reply(StatusCode::OK, &format!(r#"{{"active":{active}}}"#)),
        None => reply(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#),
    }
}
