//! Reading config files written before a field existed: the field's default is filled into the parsed JSON,
//! so that a model directory or a transformers `config.json` that lacks it still deserialises (burn's `Config`
//! derive needs every field present).

/// Inserts `default` at the dotted `path` of `value` when its parent object exists and the key does not; true when
/// it did.
pub fn fill_missing(value: &mut serde_json::Value, path: &str, default: serde_json::Value) -> bool {
    let (parents, key) = path.rsplit_once('.').map_or((None, path), |(p, k)| (Some(p), k));
    let mut node = value;
    for part in parents.into_iter().flat_map(|p| p.split('.')) {
        match node.get_mut(part) {
            Some(child) => node = child,
            None => return false,
        }
    }
    match node.as_object_mut() {
        Some(fields) if !fields.contains_key(key) => {
            fields.insert(key.to_string(), default);
            true
        }
        _ => false,
    }
}
