//! Exercises the generated API of four merged models: a LoRA pair, a
//! stateful prefill/decode pair sharing a KV cache, a model mixing several
//! input and output types, an image and a flexible shape, and an encoder's
//! fixed-shape functions beside its flexible one; a loaded
//! function moved to another thread, a load from a compiled `.mlmodelc`
//! path, awaited `predict_async` futures, and `load_async` awaited with
//! its function then moved to a thread that awaits a prediction. CI
//! compiles it for the host
//! and type-checks it for Apple targets; run on the host it predicts with
//! the reference backend and checks the results (and on a Mac, with Core
//! ML). Two classifiers' String and Int64 labels: `classify.rs`.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use coreml_multifunction::half::f16;
use coreml_multifunction::runtime::{self, Configuration, Image, PixelFormat, Tensor};

coreml_multifunction::include_models!();

mod classify;

/// Wakes the thread blocked in [`block_on`].
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread: the generated futures need
/// no particular async runtime, so a dozen lines of std serve.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            // A spurious wake-up only polls once more.
            Poll::Pending => thread::park(),
        }
    }
}

/// Two runs of one function on one input agree (to fp16 rounding: Core ML
/// may pick another compute unit for another load).
fn assert_close(got: &Tensor<f16>, want: &Tensor<f16>) {
    assert_eq!(got.shape(), want.shape());
    for (g, w) in got.as_slice().iter().zip(want.as_slice()) {
        let (g, w) = (g.to_f32(), w.to_f32());
        assert!((g - w).abs() <= 1e-2 + 1e-2 * w.abs(), "{g} vs {w}");
    }
}

/// Holds only for values that may go to another thread and outlive every
/// borrow.
fn assert_send_static<T: Send + 'static>(_: &T) {}

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

    // A loaded function moves to another thread (it is `Send` on every
    // target) and predicts there.
    let thread_input = input.clone();
    let (adapter, moved) = thread::spawn(move || {
        let output = adapter.predict(&thread_input);
        (adapter, output)
    })
    .join()
    .expect("the prediction thread");
    assert_close(&moved?.out_adapter_2, &output.out_adapter_2);

    // A prediction started with `predict_async` owns what it needs: the
    // future is `Send + 'static`, and outlives the function it came from.
    let other = lora::Adapter2::load()?;
    let future = other.predict_async(&input);
    assert_send_static(&future);
    drop(other);
    let awaited = block_on(future)?;
    assert_close(&awaited.out_adapter_2, &output.out_adapter_2);
    // A bad input is the future's error, not a panic.
    let wrong_async = block_on(adapter.predict_async(&lora::Adapter2Input {
        input_adapter_2: f16_tensor(&[1, 63], |_| 0.0)?,
    }));
    assert!(wrong_async.is_err());

    // A compiled model (`.mlmodelc`) loads by path with Core ML: a Mac build
    // host compiles one beside the package (and `copy-to` ships it).
    // Elsewhere, and with the reference backend, it is a clear error.
    let compiled = Path::new(lora::PACKAGE).with_extension("mlmodelc");
    let configuration = Configuration::default();
    if cfg!(target_vendor = "apple") && compiled.is_dir() {
        let from_compiled = lora::Adapter2::load_from(&compiled, &configuration)?;
        let out = block_on(from_compiled.predict_async(&input))?;
        assert_close(&out.out_adapter_2, &output.out_adapter_2);
    } else {
        let error = lora::Adapter2::load_from(&compiled, &configuration).unwrap_err();
        assert!(error.to_string().contains("mlmodelc"), "{error}");
    }

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
    // The same conversation awaited: the future borrows the state, and the
    // state sees its write.
    let mut awaited_state: llm::State = decode.new_state()?;
    let step = llm::DecodeInput {
        token: f16_tensor(&llm::DecodeInput::TOKEN_SHAPE, |i| i as f32 / 16.0)?,
        position: Tensor::new([1], vec![2])?,
    };
    let out = block_on(decode.predict_async(&step, &mut awaited_state))?;
    assert_eq!(out.context.shape(), &[1, 16]);
    let written = awaited_state.kv_cache()?;
    assert!(written.as_slice()[2 * 16..3 * 16]
        .iter()
        .any(|v| v.to_f32() != 0.0));
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

    // Fixed-shape functions of a flexible encoder (`shapes` in Cargo.toml):
    // each input's shape is a constant, the outputs' shapes are fixed with
    // it, and the results are the flexible function's.
    const _: () = assert!(encoder::Seq8Input::INPUT_IDS_SHAPE[1] == 8);
    assert_eq!(encoder::Seq8Input::INPUT_IDS_SHAPE, [1, 8]);
    assert_eq!(encoder::Seq32Input::INPUT_IDS_SHAPE, [1, 32]);
    let ids = |shape: [usize; 2]| {
        Tensor::new(
            shape,
            (0..shape[1])
                .map(|i| (i * 7 % 50) as i32)
                .collect::<Vec<_>>(),
        )
    };
    let seq_8 = encoder::Seq8::load()?;
    let fixed_8 = seq_8.predict(&encoder::Seq8Input {
        input_ids: ids(encoder::Seq8Input::INPUT_IDS_SHAPE)?,
    })?;
    assert_eq!(fixed_8.hidden_states.shape(), &[1, 8, 32]);
    assert_eq!(fixed_8.pooled.shape(), &[1, 32]);
    let flexible_8 = encoder::Flexible::load()?.predict(&encoder::FlexibleInput {
        input_ids: ids(encoder::Seq8Input::INPUT_IDS_SHAPE)?,
    })?;
    assert_close(&fixed_8.hidden_states, &flexible_8.hidden_states);
    assert_close(&fixed_8.pooled, &flexible_8.pooled);
    let seq_32 = encoder::Seq32::load()?;
    let fixed_32 = seq_32.predict(&encoder::Seq32Input {
        input_ids: ids(encoder::Seq32Input::INPUT_IDS_SHAPE)?,
    })?;
    assert_eq!(fixed_32.hidden_states.shape(), &[1, 32, 32]);
    // Any other shape, even one the flexible source allows, is refused.
    let error = seq_8
        .predict(&encoder::Seq8Input {
            input_ids: ids([1, 5])?,
        })
        .unwrap_err();
    assert!(error.to_string().contains("[1, 8]"), "{error}");
    println!(
        "fixed shapes: seq_8 {:?} -> {:?}, seq_32 {:?} -> {:?}",
        encoder::Seq8Input::INPUT_IDS_SHAPE,
        fixed_8.hidden_states.shape(),
        encoder::Seq32Input::INPUT_IDS_SHAPE,
        fixed_32.hidden_states.shape()
    );

    chunked_prefill()?;
    classify::classifiers()?;
    load_without_blocking()?;

    println!(
        "generated API: every function loaded and predicted ({})",
        adapter.function().backend().name()
    );
    Ok(())
}

/// A prefill split into two chunks (`chunks = 2`) through its pipeline
/// struct, against the same source merged unsplit: the same API, one KV
/// cache for both and for the decode after them. On the reference backend
/// with `fp16_ops` the split run is bit for bit the unsplit one; without
/// it, a cut adds an fp16 rounding, so the two agree within tolerance.
fn chunked_prefill() -> Result<(), Box<dyn std::error::Error>> {
    assert_eq!(
        chunked::Prefill::CHUNKS,
        ["prefill_chunk1", "prefill_chunk2"]
    );
    let input = chunked::PrefillInput {
        input_ids: Tensor::new(
            chunked::PrefillInput::INPUT_IDS_SHAPE.to_vec(),
            (0..8).map(|i| (i * 7 + 3) % 64).collect::<Vec<i32>>(),
        )?,
        position: Tensor::new(vec![1], vec![0])?,
    };
    for fp16_ops in [true, false] {
        let configuration = Configuration {
            fp16_ops,
            ..Configuration::default()
        };
        let split = chunked::Prefill::load_with(&configuration)?;
        let whole = chunked::PrefillWhole::load_with(&configuration)?;
        let mut split_state = split.new_state()?;
        let mut whole_state = whole.new_state()?;
        let from_split = split.predict(&input, &mut split_state)?;
        let from_whole = whole.predict(
            &chunked::PrefillWholeInput {
                input_ids: input.input_ids.clone(),
                position: input.position.clone(),
            },
            &mut whole_state,
        )?;
        let exact = fp16_ops && split.pipeline().backend() == runtime::Backend::Reference;
        let (cache_split, cache_whole) = (split_state.kv_cache()?, whole_state.kv_cache()?);
        if exact {
            assert_eq!(from_split.logits, from_whole.logits, "fp16_ops: logits");
            assert_eq!(cache_split, cache_whole, "fp16_ops: the cache");
        } else {
            assert_close(&from_split.logits, &from_whole.logits);
            assert_close(&cache_split, &cache_whole);
        }

        // The pipeline moves to another thread, and its async prediction
        // is awaited there on a state of its own.
        let moved_input = input.clone();
        let (split, awaited) = thread::spawn(move || {
            let mut state = split.new_state().map_err(|e| e.to_string())?;
            let out = block_on(split.predict_async(&moved_input, &mut state))
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((split, out))
        })
        .join()
        .expect("the pipeline thread")?;
        assert_eq!(awaited.logits, from_split.logits);

        // Decode goes on from the split prefill's cache.
        let decode = chunked::Decode::load_with(&configuration)?;
        let next = decode.predict(
            &chunked::DecodeInput {
                input_ids: Tensor::new(vec![1, 1], vec![5])?,
                position: Tensor::new(vec![1], vec![8])?,
            },
            &mut split_state,
        )?;
        assert_eq!(next.logits.shape(), &[1, 1, 64]);
        drop(split);
        println!(
            "chunked prefill (fp16_ops {fp16_ops}): {} chunks, logits {:?}, {}",
            chunked::Prefill::CHUNKS.len(),
            from_split.logits.shape(),
            if exact {
                "bit for bit the unsplit function's"
            } else {
                "within tolerance of the unsplit function's"
            }
        );
    }
    Ok(())
}

/// Loading without blocking: `load_async` returns a `Send + 'static`
/// future of the function (with Core ML the compile and the load run on a
/// thread of their own; the reference backend's future is ready at once).
/// The function it gives moves to another thread, which awaits a
/// prediction there; a pipeline struct loads the same way.
fn load_without_blocking() -> Result<(), Box<dyn std::error::Error>> {
    let configuration = Configuration::default();
    let input = lora::Adapter1Input {
        input_adapter_1: f16_tensor(&lora::Adapter1Input::INPUT_ADAPTER_1_SHAPE, |i| {
            (i % 5) as f32 / 5.0
        })?,
    };
    let expected = lora::Adapter1::load()?.predict(&input)?;

    let loading = lora::Adapter1::load_async(&configuration);
    assert_send_static(&loading);
    let adapter = block_on(loading)?;
    let moved = input.clone();
    let handle = thread::spawn(move || block_on(adapter.predict_async(&moved)));
    let output = handle.join().expect("the prediction thread")?;
    assert_close(&output.out_adapter_1, &expected.out_adapter_1);

    // By path, as the bundle's copy would be loaded; a pipeline struct too.
    let from_path = block_on(lora::Adapter1::load_from_async(
        lora::PACKAGE,
        &configuration,
    ))?;
    assert_close(
        &from_path.predict(&input)?.out_adapter_1,
        &expected.out_adapter_1,
    );
    let split = block_on(chunked::Prefill::load_async(&configuration))?;
    assert_eq!(split.pipeline().chunk_names(), chunked::Prefill::CHUNKS);

    // A model that is not there is the future's error, naming the path.
    let missing = Path::new(lora::PACKAGE).with_file_name("missing.mlpackage");
    let error = block_on(lora::Adapter1::load_from_async(&missing, &configuration)).unwrap_err();
    assert!(error.to_string().contains("missing.mlpackage"), "{error}");
    println!(
        "async load: loaded without blocking, predicted on another thread ({})",
        from_path.function().backend().name()
    );
    Ok(())
}
