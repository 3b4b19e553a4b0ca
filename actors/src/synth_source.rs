//! `synth`: streams the synthetic world's rows (the same rows `perceptio synth` writes to parquet, in the same
//! order) as frames, without touching disk.

use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::{
    BuildContext, Frame, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl, Source,
    SourceState, parse_params,
};
use perceptio_synth::{Split, SynthConfig, SynthStream};
use schemars::JsonSchema;
use serde::Deserialize;

/// Params of `synth`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SynthParams {
    /// World seed.
    #[serde(default)]
    pub seed: u64,
    /// `train`, `validation` or `test`.
    #[serde(default = "default_split")]
    pub split: String,
    /// Any `SynthConfig` fields (scenes, size, tasks, batch_rows, ...); the rest keep their defaults.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub config: Option<serde_json::Value>,
}

fn default_split() -> String {
    "train".into()
}

fn checked(params: &serde_json::Value) -> Result<(SynthParams, SynthConfig, Split), ParamError> {
    let p: SynthParams = parse_params(params)?;
    let split: Split = p.split.parse().map_err(|e| ParamError::new("split", format!("{e}")))?;
    let config: SynthConfig = match &p.config {
        None => SynthConfig::default(),
        Some(v) => parse_config(v)?,
    };
    config.validate().map_err(|e| ParamError::new("config", e.to_string()))?;
    Ok((p, config, split))
}

fn parse_config(v: &serde_json::Value) -> Result<SynthConfig, ParamError> {
    parse_params::<SynthConfig>(v).map_err(|e| ParamError {
        field: Some(e.field.map(|f| format!("config.{f}")).unwrap_or_else(|| "config".into())),
        message: e.message,
    })
}

pub struct SynthKind;

impl NodeKind for SynthKind {
    fn name(&self) -> &'static str {
        "synth"
    }

    fn about(&self) -> &'static str {
        "stream the synthetic spatial world's rows (same as `perceptio synth` writes) without touching disk"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(SynthParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        checked(ctx.params)?;
        let schema = PortSchema::from_arrow(&perceptio_runtime::schemas::dataset::synth_schema());
        Ok(NodePorts { inputs: vec![], outputs: vec![PortDecl::required("out", schema)] })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let (p, config, split) = checked(ctx.params)?;
        let stream = SynthStream::new(config, p.seed, split).map_err(|e| ParamError::new("config", e.to_string()))?;
        Ok(NodeImpl::Source(Box::new(SynthSource { stream })))
    }
}

struct SynthSource {
    stream: SynthStream,
}

impl Source for SynthSource {
    fn next(&mut self, out: &mut Outputs) -> Result<SourceState, NodeError> {
        match self.stream.next() {
            None => Ok(SourceState::Done),
            Some(Err(e)) => Err(NodeError::msg(format!("synthetic world: {e}"))),
            Some(Ok(batch)) => {
                out.count_read(batch.num_rows());
                out.emit("out", Frame::new(batch))?;
                Ok(SourceState::More)
            }
        }
    }
}
