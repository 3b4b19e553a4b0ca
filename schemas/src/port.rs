//! Port schemas: what a node port produces or requires (Arrow columns plus named tensor attachments),
//! and the rule that decides whether a producer's schema satisfies a consumer's.

use std::fmt;

use arrow::datatypes::{DataType, Schema};

/// One Arrow column of a port. `data_type: None` on a consumer means "any type".
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    pub name: String,
    pub data_type: Option<DataType>,
}

impl FieldSpec {
    pub fn new(name: impl Into<String>, data_type: DataType) -> Self {
        Self { name: name.into(), data_type: Some(data_type) }
    }

    pub fn any(name: impl Into<String>) -> Self {
        Self { name: name.into(), data_type: None }
    }
}

/// Element kind of a tensor attachment (the schemas crate does not depend on burn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    Float,
    Int,
    Bool,
}

impl fmt::Display for TensorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TensorKind::Float => "float",
            TensorKind::Int => "int",
            TensorKind::Bool => "bool",
        })
    }
}

/// One named tensor attachment of a port: its kind and rank (first dimension = rows).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub kind: TensorKind,
    pub rank: usize,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, kind: TensorKind, rank: usize) -> Self {
        Self { name: name.into(), kind, rank }
    }
}

/// The schema of one port.
///
/// On a producer it lists what every frame carries; on a consumer what every frame must carry.
/// A consumer with `open = true` accepts any schema (pass-through nodes such as sinks).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PortSchema {
    pub fields: Vec<FieldSpec>,
    pub tensors: Vec<TensorSpec>,
    pub open: bool,
}

impl PortSchema {
    /// A consumer schema that accepts any frame.
    pub fn any() -> Self {
        Self { open: true, ..Self::default() }
    }

    pub fn with_field(mut self, field: FieldSpec) -> Self {
        self.fields.push(field);
        self
    }

    /// `field` in place of any field of the same name, else appended: the output schema of a node that adds
    /// (or overwrites) a column of its input frames.
    pub fn with_field_set(mut self, field: FieldSpec) -> Self {
        self.fields.retain(|f| f.name != field.name);
        self.fields.push(field);
        self
    }

    pub fn with_tensor(mut self, tensor: TensorSpec) -> Self {
        self.tensors.push(tensor);
        self
    }

    /// The producer schema of frames whose columns are exactly those of `schema`.
    pub fn from_arrow(schema: &Schema) -> Self {
        Self {
            fields: schema.fields().iter().map(|f| FieldSpec::new(f.name(), f.data_type().clone())).collect(),
            tensors: Vec::new(),
            open: false,
        }
    }

    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Checks that frames described by `self` (a producer) carry everything `consumer` requires.
    /// Returns every mismatch, not just the first.
    pub fn satisfies(&self, consumer: &PortSchema) -> Result<(), Vec<SchemaMismatch>> {
        if consumer.open {
            return Ok(());
        }
        let mut problems = Vec::new();
        for want in &consumer.fields {
            match self.field(&want.name) {
                None => problems.push(SchemaMismatch::MissingField { field: want.name.clone() }),
                Some(have) => {
                    if let (Some(expected), Some(found)) = (&want.data_type, &have.data_type) {
                        if !types_compatible(found, expected) {
                            problems.push(SchemaMismatch::FieldType {
                                field: want.name.clone(),
                                expected: expected.clone(),
                                found: found.clone(),
                            });
                        }
                    }
                }
            }
        }
        for want in &consumer.tensors {
            match self.tensor(&want.name) {
                None => problems.push(SchemaMismatch::MissingTensor { tensor: want.name.clone() }),
                Some(have) if have.kind != want.kind || have.rank != want.rank => {
                    problems.push(SchemaMismatch::TensorType {
                        tensor: want.name.clone(),
                        expected: (want.kind, want.rank),
                        found: (have.kind, have.rank),
                    })
                }
                Some(_) => {}
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}

/// Utf8 and LargeUtf8 (and Binary and LargeBinary) hold the same values; everything else must match exactly.
fn types_compatible(found: &DataType, expected: &DataType) -> bool {
    use DataType::*;
    match (found, expected) {
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => true,
        (List(a) | LargeList(a), List(b) | LargeList(b)) => types_compatible(a.data_type(), b.data_type()),
        (Struct(a), Struct(b)) => b.iter().all(|want| {
            a.iter().any(|have| have.name() == want.name() && types_compatible(have.data_type(), want.data_type()))
        }),
        _ => found == expected,
    }
}

/// One way a producer's schema fails a consumer's.
#[derive(Debug, Clone, PartialEq)]
pub enum SchemaMismatch {
    MissingField { field: String },
    FieldType { field: String, expected: DataType, found: DataType },
    MissingTensor { tensor: String },
    TensorType { tensor: String, expected: (TensorKind, usize), found: (TensorKind, usize) },
}

impl fmt::Display for SchemaMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaMismatch::MissingField { field } => write!(f, "field `{field}` is required but not produced"),
            SchemaMismatch::FieldType { field, expected, found } => {
                write!(f, "field `{field}` has type {found}, expected {expected}")
            }
            SchemaMismatch::MissingTensor { tensor } => {
                write!(f, "tensor `{tensor}` is required but not attached")
            }
            SchemaMismatch::TensorType { tensor, expected, found } => write!(
                f,
                "tensor `{tensor}` is {} rank {}, expected {} rank {}",
                found.0, found.1, expected.0, expected.1
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_mistyped_fields_are_all_reported() {
        let producer = PortSchema::default()
            .with_field(FieldSpec::new("id", DataType::Utf8))
            .with_field(FieldSpec::new("n", DataType::Int32));
        let consumer = PortSchema::default()
            .with_field(FieldSpec::new("id", DataType::LargeUtf8))
            .with_field(FieldSpec::new("n", DataType::Int64))
            .with_field(FieldSpec::any("text"))
            .with_tensor(TensorSpec::new("pixels", TensorKind::Float, 4));
        let errs = producer.satisfies(&consumer).unwrap_err();
        assert_eq!(errs.len(), 3);
        assert_eq!(errs[0].to_string(), "field `n` has type Int32, expected Int64");
        assert_eq!(errs[1].to_string(), "field `text` is required but not produced");
        assert_eq!(errs[2].to_string(), "tensor `pixels` is required but not attached");
        assert!(producer.satisfies(&PortSchema::any()).is_ok());
    }

    #[test]
    fn a_set_field_replaces_its_namesake_or_is_appended() {
        let s = PortSchema::default()
            .with_field(FieldSpec::new("id", DataType::Utf8))
            .with_field(FieldSpec::new("codes", DataType::Int32))
            .with_field_set(FieldSpec::new("codes", DataType::Int64))
            .with_field_set(FieldSpec::new("extra", DataType::Boolean));
        let names: Vec<&str> = s.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["id", "codes", "extra"]);
        assert_eq!(s.field("codes").and_then(|f| f.data_type.clone()), Some(DataType::Int64));
    }
}
