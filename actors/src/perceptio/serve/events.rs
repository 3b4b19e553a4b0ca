//! `serve-events`: the egress of a serving graph. Delivers event rows to each request's stream through the
//! runtime's hub: tokens and answers from the router (`in`), masks and depth maps from the heads (`masks`,
//! `depths`), and error records (`errors`) as `Error` events. It keeps each stream in order: a head's event waits
//! for the token it answers (`[SEG]`, `<d_end>`) to be delivered, and `Done` waits for the head events its row says
//! follow (their decode times then fill its timings). Events of cancelled requests are dropped by the hub.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::StringArray;
use perceptio_runtime::node::error_port_schema;
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    parse_params,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::event_port_schema;
use super::{
    EventExtra, FOLLOWS_DEPTH, FOLLOWS_MASK, ServeEvent, ServeHub, clock_ns, detached, read_event_extras, read_events,
};

/// Params of `serve-events` (none).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeEventsParams {}

/// The `serve-events` kind; `hub: None` is the detached kind of the global registry (it does not build).
pub struct ServeEventsKind {
    pub hub: Option<Arc<dyn ServeHub>>,
}

impl NodeKind for ServeEventsKind {
    fn name(&self) -> &'static str {
        "serve-events"
    }

    fn about(&self) -> &'static str {
        "serving egress: deliver event rows and error records to the streams of the requests they belong to"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(ServeEventsParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: ServeEventsParams = parse_params(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![
                PortDecl::required("in", event_port_schema()),
                PortDecl::optional("masks", event_port_schema()),
                PortDecl::optional("depths", event_port_schema()),
                PortDecl::optional("errors", error_port_schema()),
            ],
            outputs: vec![],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let _: ServeEventsParams = parse_params(ctx.params)?;
        let hub = self.hub.clone().ok_or_else(|| detached(self.name()))?;
        Ok(NodeImpl::Node(Box::new(EventsSink { hub, streams: HashMap::new() })))
    }
}

/// What is known of one request's stream while it is open.
#[derive(Default)]
struct Stream {
    /// Ids of the tokens delivered so far.
    delivered: Vec<u32>,
    /// Head events that wait for their token: `(token, event, decode time)`.
    waiting: Vec<(u32, ServeEvent, Duration)>,
    /// The head events delivered ([`FOLLOWS_MASK`], [`FOLLOWS_DEPTH`]) and their decode times.
    heads: u8,
    mask: Duration,
    depth: Duration,
    /// `Done`, held until the head events it follows have been delivered, and when it arrived.
    done: Option<(ServeEvent, u8, u64)>,
}

struct EventsSink {
    hub: Arc<dyn ServeHub>,
    streams: HashMap<u64, Stream>,
}

impl EventsSink {
    fn deliver_errors(&mut self, frame: &Frame) -> Result<(), NodeError> {
        let b = frame.batch();
        let col = |name: &str| {
            b.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| NodeError::msg(format!("error records: column `{name}` is missing or not utf8")))
        };
        let (ids, errors) = (col("id")?, col("error")?);
        for r in 0..b.num_rows() {
            match ids.value(r).parse::<u64>() {
                Ok(request) => self.fail(request, errors.value(r).to_string()),
                Err(_) => tracing::warn!(id = ids.value(r), "error record for no request: {}", errors.value(r)),
            }
        }
        Ok(())
    }

    /// Ends `request`'s stream with `Error`. A head event still in flight for it opens a new entry that only
    /// `finish` clears (the hub drops what it delivers then): at most two small events per failed request.
    fn fail(&mut self, request: u64, message: String) {
        self.streams.remove(&request);
        self.hub.deliver(request, ServeEvent::Error { message });
    }

    /// Delivers what of `request`'s stream may go now: head events whose token went out, then a held `Done`
    /// once its head events did.
    fn settle(&mut self, request: u64) {
        let Some(s) = self.streams.get_mut(&request) else { return };
        let mut k = 0;
        while k < s.waiting.len() {
            if s.delivered.contains(&s.waiting[k].0) {
                let (_, event, took) = s.waiting.remove(k);
                match &event {
                    ServeEvent::Mask { .. } => (s.heads, s.mask) = (s.heads | FOLLOWS_MASK, took),
                    _ => (s.heads, s.depth) = (s.heads | FOLLOWS_DEPTH, took),
                }
                self.hub.deliver(request, event);
            } else {
                k += 1;
            }
        }
        let ready = s.done.as_ref().is_some_and(|(_, follows, _)| s.heads & follows == *follows);
        if ready && let Some(s) = self.streams.remove(&request) {
            let Some((mut done, _, arrived_ns)) = s.done else { return };
            if let ServeEvent::Done { timings, .. } = &mut done {
                timings.mask = s.mask;
                timings.depth = s.depth;
                timings.total += Duration::from_nanos(clock_ns().saturating_sub(arrived_ns));
            }
            self.hub.deliver(request, done);
        }
    }

    fn take(&mut self, request: u64, event: ServeEvent, extra: EventExtra) {
        match event {
            ServeEvent::Error { message } => self.fail(request, message),
            ServeEvent::Token { text, id } => {
                self.streams.entry(request).or_default().delivered.push(id);
                self.hub.deliver(request, ServeEvent::Token { text, id });
                self.settle(request);
            }
            head @ (ServeEvent::Mask { .. } | ServeEvent::Depth { .. }) => {
                let took = Duration::from_nanos(extra.decode_ns.unwrap_or(0));
                let s = self.streams.entry(request).or_default();
                match extra.token {
                    Some(token) => s.waiting.push((token, head, took)),
                    None => {
                        let bit = if matches!(head, ServeEvent::Mask { .. }) { FOLLOWS_MASK } else { FOLLOWS_DEPTH };
                        s.heads |= bit;
                        self.hub.deliver(request, head);
                    }
                }
                self.settle(request);
            }
            done @ ServeEvent::Done { .. } => {
                if extra.follows == 0 && self.streams.get(&request).is_none_or(|s| s.waiting.is_empty()) {
                    self.streams.remove(&request);
                    self.hub.deliver(request, done);
                } else {
                    self.streams.entry(request).or_default().done = Some((done, extra.follows, clock_ns()));
                    self.settle(request);
                }
            }
        }
    }
}

impl Node for EventsSink {
    fn process(&mut self, port: &str, frame: Frame, _out: &mut Outputs) -> Result<(), NodeError> {
        match port {
            "errors" => self.deliver_errors(&frame),
            _ => {
                let extras = read_event_extras(&frame)?;
                for ((request, event), extra) in read_events(&frame)?.into_iter().zip(extras) {
                    self.take(request, event, extra);
                }
                Ok(())
            }
        }
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<(), NodeError> {
        // the graph is ending: whatever is still held can no longer complete
        for (request, s) in std::mem::take(&mut self.streams) {
            if s.done.is_some() || !s.waiting.is_empty() {
                self.hub.deliver(
                    request,
                    ServeEvent::Error { message: "the serving graph stopped before this answer was complete".into() },
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::super::{HubClosed, ServeAnswer, ServeRequest, ServeTimings};
    use super::*;

    /// A hub that records what is delivered.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, ServeEvent)>>);

    impl ServeHub for Recorder {
        fn recv_requests(&self, _timeout: Duration, _max: usize) -> Result<Vec<ServeRequest>, HubClosed> {
            Err(HubClosed)
        }
        fn is_cancelled(&self, _request: u64) -> bool {
            false
        }
        fn deliver(&self, request: u64, event: ServeEvent) {
            self.0.lock().unwrap().push((request, event));
        }
    }

    fn sink() -> (EventsSink, Arc<Recorder>) {
        let hub = Arc::new(Recorder::default());
        (EventsSink { hub: hub.clone(), streams: HashMap::new() }, hub)
    }

    fn kinds(hub: &Recorder) -> Vec<(u64, &'static str)> {
        let name = |e: &ServeEvent| match e {
            ServeEvent::Token { .. } => "token",
            ServeEvent::Mask { .. } => "mask",
            ServeEvent::Depth { .. } => "depth",
            ServeEvent::Done { .. } => "done",
            ServeEvent::Error { .. } => "error",
        };
        hub.0.lock().unwrap().iter().map(|(r, e)| (*r, name(e))).collect()
    }

    const SEG: u32 = 10;
    const D_END: u32 = 12;

    fn token(id: u32) -> (ServeEvent, EventExtra) {
        (ServeEvent::Token { text: String::new(), id }, EventExtra::default())
    }
    fn head(mask: bool, took_ns: u64) -> (ServeEvent, EventExtra) {
        let (event, token) = if mask {
            (ServeEvent::Mask { probs: vec![0.5], size: 1 }, SEG)
        } else {
            (ServeEvent::Depth { values: vec![0.0], size: 1 }, D_END)
        };
        (event, EventExtra { token: Some(token), decode_ns: Some(took_ns), follows: 0 })
    }
    fn done(follows: u8) -> (ServeEvent, EventExtra) {
        let answer = ServeAnswer { text: "ok".into(), ..ServeAnswer::default() };
        let timings = ServeTimings { total: Duration::from_millis(1), ..ServeTimings::default() };
        (ServeEvent::Done { answer, timings }, EventExtra { follows, ..EventExtra::default() })
    }

    #[test]
    fn a_head_event_waits_for_its_token_and_done_waits_for_the_heads() {
        let (mut sink, hub) = sink();
        let feed = |sink: &mut EventsSink, request: u64, (event, extra): (ServeEvent, EventExtra)| {
            sink.take(request, event, extra)
        };
        // the mask overtook its [SEG] token; request 2 interleaves and completes on its own
        feed(&mut sink, 1, head(true, 5));
        assert!(kinds(&hub).is_empty(), "a mask never goes out before its [SEG] token");
        feed(&mut sink, 1, token(SEG));
        feed(&mut sink, 2, token(7));
        feed(&mut sink, 1, token(D_END));
        feed(&mut sink, 1, done(FOLLOWS_MASK | FOLLOWS_DEPTH));
        feed(&mut sink, 2, done(0));
        assert_eq!(
            kinds(&hub),
            vec![(1, "token"), (1, "mask"), (2, "token"), (1, "token"), (2, "done")],
            "request 1's Done waits for its depth map"
        );
        feed(&mut sink, 1, head(false, 7));
        assert_eq!(kinds(&hub)[5..], [(1, "depth"), (1, "done")]);
        let delivered = hub.0.lock().unwrap();
        let ServeEvent::Done { timings, .. } = &delivered[6].1 else { panic!("Done last") };
        assert_eq!((timings.mask, timings.depth), (Duration::from_nanos(5), Duration::from_nanos(7)));
        assert!(timings.total >= Duration::from_millis(1), "the hold is added to the total");
        assert!(sink.streams.is_empty(), "nothing is kept once the streams ended");
    }

    #[test]
    fn an_error_ends_the_stream_and_drops_what_it_held() {
        let (mut sink, hub) = sink();
        let (e, x) = token(SEG);
        sink.take(3, e, x);
        let (e, x) = done(FOLLOWS_MASK);
        sink.take(3, e, x);
        sink.take(3, ServeEvent::Error { message: "mask decoder: boom".into() }, EventExtra::default());
        assert_eq!(kinds(&hub), vec![(3, "token"), (3, "error")]);
        assert!(sink.streams.is_empty());
        // the graph ending with an answer still held fails that request instead of leaving it open
        let (e, x) = done(FOLLOWS_DEPTH);
        sink.take(4, e, x);
        sink.finish(&mut Outputs::detached("events")).unwrap();
        assert_eq!(kinds(&hub)[2..], [(4, "error")]);
    }
}
