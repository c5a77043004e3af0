//! Exercises the generated API of three merged models: a LoRA pair, a
//! stateful prefill/decode pair sharing a KV cache, and a model mixing
//! several input and output types, an image and a flexible shape. CI
//! compiles it for the host and type-checks it for Apple targets; run on
//! the host it predicts with the reference backend and checks the results.

use coreml_multifunction::half::f16;
use coreml_multifunction::runtime::{self, Image, PixelFormat, Tensor};

coreml_multifunction::include_models!();

fn f16_tensor(shape: &[usize], values: impl Fn(usize) -> f32) -> runtime::Result<Tensor<f16>> {
    let count = shape.iter().product();
    Tensor::new(
        shape,
        (0..count)
            .map(|i| f16::from_f32(values(i)))
            .collect::<Vec<_>>(),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The functions of each model, and which is the default.
    assert_eq!(lora::Function::ALL.len(), 2);
    assert_eq!(lora::Function::DEFAULT.name(), "adapter_1");
    assert_eq!(llm::Function::DEFAULT, llm::Function::Decode);

    // A LoRA adapter: typed inputs, typed outputs.
    let adapter = lora::Adapter2::load()?;
    let input = lora::Adapter2Input {
        input_adapter_2: f16_tensor(&lora::Adapter2Input::INPUT_ADAPTER_2_SHAPE, |i| {
            i as f32 / 64.0
        })?,
    };
    let output = adapter.predict(&input)?;
    assert_eq!(output.out_adapter_2.shape(), &[1, 64]);

    // A wrong shape is an error before any backend runs.
    let wrong = lora::Adapter2Input {
        input_adapter_2: f16_tensor(&[1, 63], |_| 0.0)?,
    };
    let error = adapter.predict(&wrong).unwrap_err();
    assert!(error.to_string().contains("[1, 64]"), "{error}");

    // Prefill and decode share one state type: one KV cache serves both.
    let prefill = llm::Prefill::load()?;
    let decode = llm::Decode::load()?;
    let mut state: llm::State = prefill.new_state()?;
    prefill.predict(
        &llm::PrefillInput {
            prompt: f16_tensor(&llm::PrefillInput::PROMPT_SHAPE, |i| (i % 7) as f32 / 7.0)?,
        },
        &mut state,
    )?;
    for step in 0..2 {
        let out = decode.predict(
            &llm::DecodeInput {
                token: f16_tensor(&llm::DecodeInput::TOKEN_SHAPE, |i| (i + step) as f32 / 16.0)?,
                position: Tensor::new([1], vec![3 + step as i32])?,
            },
            &mut state,
        )?;
        assert_eq!(out.context.shape(), &[1, 16]);
    }
    let cache = state.kv_cache()?;
    assert_eq!(cache.shape(), &[1, 8, 16]);
    // Rows 0..5 were written (3 by prefill, 2 by decode), rows 5.. are still zero.
    let row = |r: usize| &cache.as_slice()[r * 16..(r + 1) * 16];
    assert!(row(4).iter().any(|v| v.to_f32() != 0.0));
    assert!(row(5).iter().all(|v| v.to_f32() == 0.0));

    // Several dtypes in and out.
    let mixed = mixed::MultiIo::load()?;
    let out = mixed.predict(&mixed::MultiIoInput {
        features: Tensor::new([1, 16], vec![0.25f32; 16])?,
        token_ids: Tensor::new([1, 4], vec![3, 1, 4, 15])?,
        gain: Tensor::new([1, 1], vec![f16::from_f32(1.5)])?,
    })?;
    let _: &Tensor<f32> = &out.mixed;
    let _: &Tensor<f16> = &out.gated;
    let _: &Tensor<i32> = &out.count;

    // An image input: raw pixels of the declared size and format.
    let image = mixed::Image::load()?;
    let pixels = Image::new(16, 16, PixelFormat::Rgb8, vec![128; 16 * 16 * 3]).expect("16x16 RGB");
    let out = image.predict(&mixed::ImageInput { image: pixels })?;
    assert_eq!(out.activation.shape(), &[1, 4, 16, 16]);

    // A flexible dimension: accepted within its range, refused outside it.
    let flexible = mixed::Flexible::load()?;
    flexible.predict(&mixed::FlexibleInput {
        tokens: f16_tensor(&[1, 5, 8], |_| 0.5)?,
    })?;
    let error = flexible
        .predict(&mixed::FlexibleInput {
            tokens: f16_tensor(&[1, 17, 8], |_| 0.5)?,
        })
        .unwrap_err();
    assert!(error.to_string().contains("1..=16"), "{error}");

    println!(
        "generated API: every function loaded and predicted ({})",
        adapter.function().backend().name()
    );
    Ok(())
}
