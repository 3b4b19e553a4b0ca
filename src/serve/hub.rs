//! The runtime's side of the serving graph's live channel: the request queue `serve-requests` reads, the open
//! request sessions (each an event sender plus its in-flight slot), and delivery and cancellation by request id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Duration;

use perceptio_actors::perceptio::serve::{HubClosed, ServeEvent, ServeHub, ServeRequest};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc as tmpsc};

/// One open request: where its events go, and the in-flight slot it holds until it ends.
struct Session {
    events: tmpsc::UnboundedSender<ServeEvent>,
    _slot: OwnedSemaphorePermit,
}

/// Shared by the runtime, its request handles and the graph's serve nodes.
pub(crate) struct Hub {
    /// None once the runtime stopped accepting requests (the source then drains the queue and ends).
    intake: Mutex<Option<mpsc::Sender<ServeRequest>>>,
    queue: Mutex<mpsc::Receiver<ServeRequest>>,
    sessions: Mutex<HashMap<u64, Session>>,
    pub(crate) slots: Arc<Semaphore>,
    next_id: AtomicU64,
    /// Why the runtime stopped, once it has.
    stopped: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few map or channel operations that cannot leave the data inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a request could not be opened.
pub(crate) enum OpenError {
    /// The runtime stopped (with this reason).
    Stopped(String),
}

impl Hub {
    pub(crate) fn new(max_in_flight: usize) -> Self {
        let (tx, rx) = mpsc::channel();
        Self {
            intake: Mutex::new(Some(tx)),
            queue: Mutex::new(rx),
            sessions: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(max_in_flight)),
            next_id: AtomicU64::new(1),
            stopped: Mutex::new(None),
        }
    }

    /// Opens a session holding `slot` and queues its request (the id is filled in here).
    pub(crate) fn open(
        &self,
        mut request: ServeRequest,
        slot: OwnedSemaphorePermit,
    ) -> Result<(u64, tmpsc::UnboundedReceiver<ServeEvent>), OpenError> {
        if let Some(reason) = lock(&self.stopped).clone() {
            return Err(OpenError::Stopped(reason));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.id = id;
        let (tx, rx) = tmpsc::unbounded_channel();
        lock(&self.sessions).insert(id, Session { events: tx, _slot: slot });
        let sent = match lock(&self.intake).as_ref() {
            Some(intake) => intake.send(request).is_ok(),
            None => false,
        };
        if !sent {
            lock(&self.sessions).remove(&id);
            let reason = lock(&self.stopped).clone().unwrap_or_else(|| "the runtime is shutting down".into());
            return Err(OpenError::Stopped(reason));
        }
        Ok((id, rx))
    }

    /// Ends a request from the client's side: its slot is free at once, and the graph stops working on it.
    pub(crate) fn cancel(&self, id: u64) {
        let removed = lock(&self.sessions).remove(&id);
        drop(removed);
    }

    /// Requests currently open (submitted, not yet ended or cancelled).
    pub(crate) fn open_requests(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Stops accepting requests; the ones already queued are still answered.
    pub(crate) fn close_intake(&self) {
        lock(&self.intake).take();
    }

    /// The graph ended: refuse new requests and end every open one with an `Error` carrying `reason`.
    pub(crate) fn stop(&self, reason: String) {
        lock(&self.stopped).get_or_insert(reason.clone());
        self.close_intake();
        self.slots.close();
        let sessions: Vec<Session> = lock(&self.sessions).drain().map(|(_, s)| s).collect();
        for s in sessions {
            let _ = s.events.send(ServeEvent::Error { message: reason.clone() });
        }
    }

    pub(crate) fn stopped(&self) -> Option<String> {
        lock(&self.stopped).clone()
    }
}

impl ServeHub for Hub {
    fn recv_requests(&self, timeout: Duration, max: usize) -> Result<Vec<ServeRequest>, HubClosed> {
        let queue = lock(&self.queue);
        let first = match queue.recv_timeout(timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => return Ok(Vec::new()),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(HubClosed),
        };
        let mut out = vec![first];
        while out.len() < max {
            match queue.try_recv() {
                Ok(r) => out.push(r),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    fn is_cancelled(&self, request: u64) -> bool {
        lock(&self.sessions).get(&request).is_none_or(|s| s.events.is_closed())
    }

    fn deliver(&self, request: u64, event: ServeEvent) {
        let mut sessions = lock(&self.sessions);
        if event.is_final() {
            // Removing the session frees its slot and closes the stream after this last event.
            if let Some(s) = sessions.remove(&request) {
                let _ = s.events.send(event);
            }
        } else if let Some(s) = sessions.get(&request)
            && s.events.send(event).is_err()
        {
            sessions.remove(&request);
        }
    }
}
