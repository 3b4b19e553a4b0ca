//! Turning encoded scene rows into Arrow RecordBatches in the dataset schema (`perceptio_schemas::dataset`).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Float32Array, Int32Array, ListArray, ListBuilder, StringArray, StringBuilder,
    StructArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{Float32Type, Int32Type};
use arrow::record_batch::RecordBatch;
use perceptio_schemas::dataset as ds;

use crate::error::SynthError;
use crate::pipeline::{EncodedSample, SceneRows};

/// An image struct column `{bytes, path}` with `path` null; rows with `None` are null.
fn image_column(bytes: Vec<Option<&[u8]>>) -> ArrayRef {
    let n = bytes.len();
    let validity: Vec<bool> = bytes.iter().map(Option::is_some).collect();
    let nulls = if validity.iter().all(|&v| v) { None } else { Some(NullBuffer::from(validity)) };
    let b: ArrayRef = Arc::new(BinaryArray::from(bytes));
    let p: ArrayRef = Arc::new(StringArray::new_null(n));
    Arc::new(StructArray::new(ds::image_fields(), vec![b, p], nulls))
}

/// The batch of the given rows (each a scene and one of its samples), in order.
pub fn batch(rows: &[(&SceneRows, &EncodedSample)]) -> Result<RecordBatch, SynthError> {
    let s = |f: &dyn Fn(&SceneRows, &EncodedSample) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(|(sc, e)| f(sc, e))))
    };
    let sample_id = s(&|sc, e| format!("{}-{}-{}", sc.scene_id, e.sample.task.name(), e.sample.index));
    let scene_id = s(&|sc, _| sc.scene_id.clone());
    let split = s(&|sc, _| sc.split.name().to_string());
    let task = s(&|_, e| e.sample.task.name().to_string());
    let kind = s(&|_, e| e.sample.kind.to_string());
    let image = image_column(
        rows.iter().map(|(sc, e)| Some(e.marked_png.as_deref().unwrap_or(sc.image_png.as_slice()))).collect(),
    );
    let width: ArrayRef = Arc::new(Int32Array::from_iter_values(rows.iter().map(|(sc, _)| sc.width as i32)));
    let height: ArrayRef = Arc::new(Int32Array::from_iter_values(rows.iter().map(|(sc, _)| sc.height as i32)));
    let question = s(&|_, e| e.sample.question.clone());
    let answer = s(&|_, e| e.sample.answer.clone());
    let expression: ArrayRef =
        Arc::new(rows.iter().map(|(_, e)| e.sample.expression.as_deref()).collect::<StringArray>());
    let depth_dependent: ArrayRef =
        Arc::new(rows.iter().map(|(_, e)| Some(e.sample.depth_dependent)).collect::<BooleanArray>());
    let mask = image_column(
        rows.iter()
            .map(|(sc, e)| match (e.sample.task, e.sample.target_object) {
                (crate::config::TaskKind::Referring, Some(id)) => sc.mask_png(id),
                _ => None,
            })
            .collect(),
    );
    let target: ArrayRef =
        Arc::new(rows.iter().map(|(_, e)| e.sample.target_object.map(i32::from)).collect::<Int32Array>());
    let depth = image_column(rows.iter().map(|(sc, _)| Some(sc.depth_png.as_slice())).collect());
    let depth_scale: ArrayRef = Arc::new(Float32Array::from_iter_values(rows.iter().map(|(sc, _)| sc.depth_scale)));
    let mut labels = ListBuilder::new(StringBuilder::new());
    for (_, e) in rows {
        match &e.sample.points {
            Some(p) => {
                for l in &p.labels {
                    labels.values().append_value(l.to_string());
                }
                labels.append(true);
            }
            None => labels.append(false),
        }
    }
    let labels: ArrayRef = Arc::new(labels.finish());
    let ints = |f: &dyn Fn(&crate::tasks::PointSet) -> Vec<Option<i32>>| -> ArrayRef {
        Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(
            rows.iter().map(|(_, e)| e.sample.points.as_ref().map(f)),
        ))
    };
    let px = ints(&|p| p.x.iter().map(|&v| Some(v as i32)).collect());
    let py = ints(&|p| p.y.iter().map(|&v| Some(v as i32)).collect());
    let pd: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Float32Type, _, _>(
        rows.iter()
            .map(|(_, e)| e.sample.points.as_ref().map(|p| p.depth.iter().map(|&d| Some(d)).collect::<Vec<_>>())),
    ));
    let scene = s(&|sc, _| sc.scene_json.clone());
    let columns = vec![
        sample_id,
        scene_id,
        split,
        task,
        kind,
        image,
        width,
        height,
        question,
        answer,
        expression,
        depth_dependent,
        mask,
        target,
        depth,
        depth_scale,
        labels,
        px,
        py,
        pd,
        scene,
    ];
    RecordBatch::try_new(Arc::new(ds::synth_schema()), columns)
        .map_err(|source| SynthError::Arrow { what: "synth dataset rows".into(), source })
}
