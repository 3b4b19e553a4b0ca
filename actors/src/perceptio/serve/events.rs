//! `serve-events`: the egress of a serving graph. Delivers event rows (`in`) to each request's stream through
//! the runtime's hub, and turns error records (`errors`, from any node's `errors` port) into `Error` events for
//! the requests they name. Events of requests that were cancelled meanwhile are dropped by the hub.

use std::sync::Arc;

use arrow::array::StringArray;
use perceptio_runtime::node::error_port_schema;
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    parse_params,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::answer::event_port_schema;
use super::{ServeEvent, ServeHub, detached, read_events};

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
                PortDecl::optional("errors", error_port_schema()),
            ],
            outputs: vec![],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let _: ServeEventsParams = parse_params(ctx.params)?;
        let hub = self.hub.clone().ok_or_else(|| detached(self.name()))?;
        Ok(NodeImpl::Node(Box::new(EventsSink { hub })))
    }
}

struct EventsSink {
    hub: Arc<dyn ServeHub>,
}

impl EventsSink {
    fn deliver_errors(&self, frame: &Frame) -> Result<(), NodeError> {
        let b = frame.batch();
        let col = |name: &str| {
            b.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| NodeError::msg(format!("error records: column `{name}` is missing or not utf8")))
        };
        let (ids, errors) = (col("id")?, col("error")?);
        for r in 0..b.num_rows() {
            match ids.value(r).parse::<u64>() {
                Ok(request) => self.hub.deliver(request, ServeEvent::Error { message: errors.value(r).to_string() }),
                Err(_) => tracing::warn!(id = ids.value(r), "error record for no request: {}", errors.value(r)),
            }
        }
        Ok(())
    }
}

impl Node for EventsSink {
    fn process(&mut self, port: &str, frame: Frame, _out: &mut Outputs) -> Result<(), NodeError> {
        match port {
            "errors" => self.deliver_errors(&frame),
            _ => {
                for (request, event) in read_events(&frame)? {
                    self.hub.deliver(request, event);
                }
                Ok(())
            }
        }
    }
}
