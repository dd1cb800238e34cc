//! A TCP relay in front of a service, so a test can cut every client connection at once.

use parking_lot::Mutex;
use std::{
    io::ErrorKind,
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// Relays `127.0.0.1:port` to `127.0.0.1:upstream` while open; closed, the port refuses
/// connections like a stopped server.
#[derive(Debug)]
pub(crate) struct Relay {
    port: u16,
    upstream: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// A closed relay.
    pub(crate) fn new(port: u16, upstream: u16) -> Self {
        Self {
            port,
            upstream,
            open: Arc::new(AtomicBool::new(false)),
            conns: Arc::default(),
            acceptor: None,
        }
    }

    /// Listens on the port (again) and relays new connections.
    pub(crate) fn open(&mut self) {
        self.close();
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind the relay port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        self.open.store(true, Ordering::SeqCst);
        let (open, conns, upstream) = (self.open.clone(), self.conns.clone(), self.upstream);
        self.acceptor = Some(std::thread::spawn(move || {
            while open.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => relay(client, upstream, &conns),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    /// Stops listening and shuts every relayed connection down (both directions, both sides).
    pub(crate) fn close(&mut self) {
        self.open.store(false, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for conn in self.conns.lock().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.close();
    }
}

fn relay(client: TcpStream, upstream: u16, conns: &Mutex<Vec<TcpStream>>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return; // the client sees its connection closed
    };
    let _ = client.set_nonblocking(false);
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let clones = (client.try_clone(), server.try_clone());
    let (Ok(client2), Ok(server2)) = clones else {
        return;
    };
    {
        let mut conns = conns.lock();
        conns.retain(|c| c.peer_addr().is_ok());
        conns.extend(client.try_clone().ok());
        conns.extend(server.try_clone().ok());
    }
    std::thread::spawn(move || pipe(client, server));
    std::thread::spawn(move || pipe(server2, client2));
}

/// Copies `from` → `to` until either side ends, then shuts both down.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
