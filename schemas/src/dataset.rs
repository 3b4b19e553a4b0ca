//! Dataset row schemas: the synthetic world's rows (`perceptio synth`, the `synth` dataflow node), stored as
//! parquet in the HuggingFace `datasets` layout (`data/{split}-00000-of-00001.parquet`, images as
//! `{bytes, path}` structs that `datasets` decodes as `Image` features).
//!
//! | column | Arrow type | null? | meaning |
//! |---|---|---|---|
//! | `sample_id` | Utf8 | no | stable id: `{scene_id}-{task}-{k}` |
//! | `scene_id` | Utf8 | no | stable id of the scene: `s{seed}-{index:07}`; splits never share a scene |
//! | `split` | Utf8 | no | `train`, `validation` or `test` |
//! | `task` | Utf8 | no | `referring`, `points`, `depth` or `vqa` |
//! | `kind` | Utf8 | no | finer kind: `attribute`, `beside`, `extreme`, `depth_order` (referring); `points`; `depth`; `colour`, `shape`, `count`, `closer` (vqa) |
//! | `image` | Struct{bytes: Binary, path: Utf8} | no | RGB PNG shown to the model (point questions: with the markers drawn); `path` is null |
//! | `width`, `height` | Int32 | no | image size, pixels |
//! | `question` | Utf8 | no | the prompt |
//! | `answer` | Utf8 | no | the target text: `Sure, [SEG].` (referring), `(B)` (points), a word (vqa), empty (depth: the target is `depth`) |
//! | `expression` | Utf8 | yes | referring expression, e.g. `the small red cube` (referring rows only) |
//! | `depth_dependent` | Boolean | no | whether answering needs depth reasoning (closest/behind expressions, point and depth questions, `closer`) |
//! | `mask` | Struct{bytes, path} | yes | 8-bit gray PNG, 255 = the target's visible pixels (referring rows only) |
//! | `target_object` | Int32 | yes | instance id of the object the row is about (its entry in `scene`) |
//! | `depth` | Struct{bytes, path} | no | 16-bit gray PNG of metric z-depth (distance along the camera axis) |
//! | `depth_scale` | Float32 | no | metres per depth unit: `depth_m = png_value * depth_scale`; 0 = no depth |
//! | `point_labels` | List<Utf8> | yes | point letters `A`.. in order (points rows only) |
//! | `point_x`, `point_y` | List<Int32> | yes | pixel column/row of each marked point |
//! | `point_depth` | List<Float32> | yes | true z-depth at each point, metres |
//! | `scene` | Utf8 | no | JSON: camera (position, pitch, fov, size), light, objects (id, shape, colour, size, base position, yaw) |

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema};

pub const SAMPLE_ID: &str = "sample_id";
pub const SCENE_ID: &str = "scene_id";
pub const SPLIT: &str = "split";
pub const TASK: &str = "task";
pub const KIND: &str = "kind";
pub const IMAGE: &str = "image";
pub const WIDTH: &str = "width";
pub const HEIGHT: &str = "height";
pub const QUESTION: &str = "question";
pub const ANSWER: &str = "answer";
pub const EXPRESSION: &str = "expression";
pub const DEPTH_DEPENDENT: &str = "depth_dependent";
pub const MASK: &str = "mask";
pub const TARGET_OBJECT: &str = "target_object";
pub const DEPTH: &str = "depth";
pub const DEPTH_SCALE: &str = "depth_scale";
pub const POINT_LABELS: &str = "point_labels";
pub const POINT_X: &str = "point_x";
pub const POINT_Y: &str = "point_y";
pub const POINT_DEPTH: &str = "point_depth";
pub const SCENE: &str = "scene";

/// Fields of the HuggingFace `Image` struct.
pub const IMAGE_BYTES: &str = "bytes";
pub const IMAGE_PATH: &str = "path";

/// The `{bytes: Binary, path: Utf8}` struct HuggingFace `datasets` stores images as.
pub fn image_fields() -> Fields {
    Fields::from(vec![Field::new(IMAGE_BYTES, DataType::Binary, true), Field::new(IMAGE_PATH, DataType::Utf8, true)])
}

/// The `image` column's data type.
pub fn image_type() -> DataType {
    DataType::Struct(image_fields())
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

/// The features JSON `datasets` reads from the parquet schema metadata (key `huggingface`).
fn hf_features() -> String {
    let value = |dtype: &str| format!(r#"{{"dtype":"{dtype}","_type":"Value"}}"#);
    let seq = |dtype: &str| format!(r#"{{"feature":{},"_type":"Sequence"}}"#, value(dtype));
    let image = r#"{"_type":"Image"}"#.to_string();
    let cols: Vec<(&str, String)> = vec![
        (SAMPLE_ID, value("string")),
        (SCENE_ID, value("string")),
        (SPLIT, value("string")),
        (TASK, value("string")),
        (KIND, value("string")),
        (IMAGE, image.clone()),
        (WIDTH, value("int32")),
        (HEIGHT, value("int32")),
        (QUESTION, value("string")),
        (ANSWER, value("string")),
        (EXPRESSION, value("string")),
        (DEPTH_DEPENDENT, value("bool")),
        (MASK, image.clone()),
        (TARGET_OBJECT, value("int32")),
        (DEPTH, image),
        (DEPTH_SCALE, value("float32")),
        (POINT_LABELS, seq("string")),
        (POINT_X, seq("int32")),
        (POINT_Y, seq("int32")),
        (POINT_DEPTH, seq("float32")),
        (SCENE, value("string")),
    ];
    let body: Vec<String> = cols.iter().map(|(k, v)| format!(r#""{k}":{v}"#)).collect();
    format!(r#"{{"info":{{"features":{{{}}}}}}}"#, body.join(","))
}

/// The schema of one synthetic-world dataset row, with the HuggingFace features metadata.
pub fn synth_schema() -> Schema {
    let fields = vec![
        Field::new(SAMPLE_ID, DataType::Utf8, false),
        Field::new(SCENE_ID, DataType::Utf8, false),
        Field::new(SPLIT, DataType::Utf8, false),
        Field::new(TASK, DataType::Utf8, false),
        Field::new(KIND, DataType::Utf8, false),
        Field::new(IMAGE, image_type(), false),
        Field::new(WIDTH, DataType::Int32, false),
        Field::new(HEIGHT, DataType::Int32, false),
        Field::new(QUESTION, DataType::Utf8, false),
        Field::new(ANSWER, DataType::Utf8, false),
        Field::new(EXPRESSION, DataType::Utf8, true),
        Field::new(DEPTH_DEPENDENT, DataType::Boolean, false),
        Field::new(MASK, image_type(), true),
        Field::new(TARGET_OBJECT, DataType::Int32, true),
        Field::new(DEPTH, image_type(), false),
        Field::new(DEPTH_SCALE, DataType::Float32, false),
        Field::new(POINT_LABELS, list_of(DataType::Utf8), true),
        Field::new(POINT_X, list_of(DataType::Int32), true),
        Field::new(POINT_Y, list_of(DataType::Int32), true),
        Field::new(POINT_DEPTH, list_of(DataType::Float32), true),
        Field::new(SCENE, DataType::Utf8, false),
    ];
    Schema::new_with_metadata(fields, HashMap::from([("huggingface".to_string(), hf_features())]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_columns_and_hf_metadata_agree() {
        let s = synth_schema();
        assert_eq!(s.fields().len(), 21);
        let meta = &s.metadata()["huggingface"];
        for f in s.fields() {
            assert!(meta.contains(&format!(r#""{}":{{"#, f.name())), "{} missing from metadata", f.name());
        }
        assert_eq!(s.field_with_name(IMAGE).unwrap().data_type(), &image_type());
        assert!(s.field_with_name(MASK).unwrap().is_nullable());
    }
}
