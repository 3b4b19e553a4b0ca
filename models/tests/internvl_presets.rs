//! Presets tiny / 1b / 4b / 8b instantiate; the large ones are shape-checked without allocating
//! their weights (burn parameters are lazy; `expected_keys` reads shapes only).

use burn::prelude::*;
use perceptio_models::internvl::InternVlConfig;
use perceptio_models::llm::Qwen2Config;
use perceptio_models::weights::expected_keys;

fn shape(keys: &std::collections::BTreeMap<String, (Vec<usize>, burn::tensor::DType)>, k: &str) -> Vec<usize> {
    keys.get(k).unwrap_or_else(|| panic!("no key {k}")).0.clone()
}

#[test]
fn public_parameter_counts_of_qwen2_5() {
    // Qwen2.5 model cards: 0.5B = 494,032,768 (0.49B), 3B = 3,085,938,688 (3.09B), vocab 151,936, tied
    assert_eq!(Qwen2Config { vocab_size: 151_936, ..Qwen2Config::qwen2_5_0_5b() }.num_params(), 494_032_768);
    assert_eq!(Qwen2Config { vocab_size: 151_936, ..Qwen2Config::qwen2_5_3b() }.num_params(), 3_085_938_688);
}

#[test]
fn presets_instantiate_with_checkpoint_shapes() {
    let dev = Device::default();
    let cases = [
        ("tiny", InternVlConfig::tiny()),
        ("1b", InternVlConfig::internvl2_5_1b()),
        ("4b", InternVlConfig::internvl2_5_4b()),
        ("8b", InternVlConfig::internvl2_5_8b()),
    ];
    for (name, cfg) in cases {
        let model = cfg.init(&dev);
        let keys = expected_keys(&model);
        let count: usize = keys.values().map(|(s, _)| s.iter().product::<usize>()).sum();
        println!("{name}: {} tensors, {count} parameters ({:.3} B)", keys.len(), count as f64 / 1e9);
        assert_eq!(count, cfg.num_params(), "{name}: module vs config count");
        let (v, t) = (&cfg.vision, &cfg.text);
        let last_v = v.num_hidden_layers - 1;
        let last_t = t.num_hidden_layers - 1;
        let kv = t.num_key_value_heads * t.head_dim();
        assert_eq!(
            shape(&keys, "vision_tower.embeddings.patch_embeddings.projection.weight"),
            [v.hidden_size, 3, 14, 14]
        );
        assert_eq!(
            shape(&keys, "vision_tower.embeddings.position_embeddings"),
            [1, v.grid() * v.grid() + 1, v.hidden_size]
        );
        assert_eq!(
            shape(&keys, &format!("vision_tower.encoder.layer.{last_v}.mlp.fc1.weight")),
            [v.intermediate_size, v.hidden_size]
        );
        assert_eq!(shape(&keys, "multi_modal_projector.layer_norm.weight"), [4 * v.hidden_size]);
        assert_eq!(shape(&keys, "multi_modal_projector.linear_1.weight"), [t.hidden_size, 4 * v.hidden_size]);
        assert_eq!(shape(&keys, "language_model.model.embed_tokens.weight"), [t.vocab_size, t.hidden_size]);
        assert_eq!(
            shape(&keys, &format!("language_model.model.layers.{last_t}.self_attn.k_proj.weight")),
            [kv, t.hidden_size]
        );
        assert_eq!(
            shape(&keys, &format!("language_model.model.layers.{last_t}.mlp.down_proj.weight")),
            [t.hidden_size, t.intermediate_size]
        );
        assert_eq!(keys.contains_key("language_model.lm_head.weight"), !t.tie_word_embeddings, "{name} head");
        assert_eq!(
            keys.contains_key("language_model.model.layers.0.self_attn.q_proj.bias"),
            t.attention_bias,
            "{name} qkv bias"
        );
    }
    // the published 1B/4B/8B sizes
    let b = |c: InternVlConfig| c.num_params() as f64 / 1e9;
    assert!((0.9..1.0).contains(&b(InternVlConfig::internvl2_5_1b())));
    assert!((3.6..3.8).contains(&b(InternVlConfig::internvl2_5_4b())));
    assert!((8.0..8.2).contains(&b(InternVlConfig::internvl2_5_8b())));
}
