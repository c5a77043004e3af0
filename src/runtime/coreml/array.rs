//! Tensors to and from `MLMultiArray`, through Core ML's scoped buffer
//! access (`getMutableBytesWithHandler:` / `getBytesWithHandler:`), with
//! the strides Core ML reports. The layout arithmetic itself is
//! [`crate::runtime::strides`], tested on every host.

use std::cell::RefCell;
use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use block2::StackBlock;
use half::f16;
use objc2::rc::Retained;
use objc2::AnyThread;
use objc2_core_ml::{MLMultiArray, MLState};
use objc2_foundation::{NSArray, NSInteger, NSNumber, NSString};

use super::super::error::{Error, Result};
use super::super::strides::{self, raw, Scalar};
use super::super::tensor::{AnyTensor, Element, Tensor};
use super::{catching, core_ml_error, guarded, ml_data_type};
use coreml_multifunction_format::DataType;

/// Whether `MLMultiArrayDataTypeFloat16` exists on this system.
fn float16_available() -> bool {
    objc2::available!(
        macos = 12.0,
        ios = 16.0,
        tvos = 16.0,
        watchos = 9.0,
        visionos = 1.0
    )
}

/// Whether `MLMultiArrayDataTypeInt8` exists on this system (the 26 SDKs).
fn int8_available() -> bool {
    objc2::available!(
        macos = 26.0,
        ios = 26.0,
        tvos = 26.0,
        watchos = 26.0,
        visionos = 26.0
    )
}

/// The numbers of an `NSArray<NSNumber>` (a shape or strides).
fn integers(numbers: &NSArray<NSNumber>) -> Vec<isize> {
    numbers.iter().map(|n| n.as_isize()).collect()
}

/// The shape of an array as Core ML reports it.
fn shape_of(array: &MLMultiArray) -> Result<Vec<usize>, String> {
    // SAFETY: a property read of a valid array.
    let shape = unsafe { array.shape() };
    let shape = integers(&shape);
    shape
        .iter()
        .map(|&dim| usize::try_from(dim).map_err(|_| format!("Core ML reports shape {shape:?}")))
        .collect()
}

/// An `MLMultiArray` holding `tensor`, input `name` of `function`.
pub(super) fn from_tensor(
    function: &str,
    name: &str,
    tensor: &AnyTensor,
) -> Result<Retained<MLMultiArray>> {
    match tensor {
        AnyTensor::Float16(t) => filled::<f16>(function, name, t),
        AnyTensor::Float32(t) => filled::<f32>(function, name, t),
        AnyTensor::Float64(t) => filled::<f64>(function, name, t),
        AnyTensor::Int32(t) => filled::<i32>(function, name, t),
        AnyTensor::Int8(t) => filled::<i8>(function, name, t),
    }
}

fn filled<T: Element + Scalar>(
    function: &str,
    name: &str,
    tensor: &Tensor<T>,
) -> Result<Retained<MLMultiArray>> {
    let shape = tensor.shape();
    // Core ML multi-arrays have at least one dimension and no empty one;
    // refuse here what `initWithShape:` could otherwise reject or raise on.
    let dims: Option<Vec<isize>> = shape
        .iter()
        .map(|&dim| isize::try_from(dim).ok().filter(|&d| d > 0))
        .collect();
    let Some(dims) = dims.filter(|dims| !dims.is_empty()) else {
        return Err(Error::WrongShape {
            function: function.to_string(),
            name: name.to_string(),
            found: shape.to_vec(),
            allowed: "Core ML multi-arrays of rank 1 or more, every dimension at least 1"
                .to_string(),
        });
    };
    match T::DATA_TYPE {
        DataType::Float16 if !float16_available() => {
            return Err(Error::OsTooOld(format!(
                "input {name:?}: fp16 multi-arrays need macOS 12, iOS 16 or later"
            )))
        }
        DataType::Int8 if !int8_available() => {
            return Err(Error::OsTooOld(format!(
                "input {name:?}: int8 multi-arrays need macOS 26, iOS 26 or later"
            )))
        }
        _ => {}
    }
    let numbers: Vec<Retained<NSNumber>> = dims.into_iter().map(NSNumber::new_isize).collect();
    let ns_shape = NSArray::from_retained_slice(&numbers);
    // SAFETY: a valid shape (rank >= 1, positive dimensions) and a data type
    // this system has (checked above); Core ML reports allocation failure
    // as an error.
    let array = catching(&format!("making an array for input {name:?}"), || unsafe {
        MLMultiArray::initWithShape_dataType_error(
            MLMultiArray::alloc(),
            &ns_shape,
            ml_data_type(T::DATA_TYPE),
        )
    })?
    .map_err(|e| core_ml_error(&e))?;

    scatter_into(&array, tensor.as_slice(), shape).map_err(|detail| {
        super::backend_error(format!(
            "filling input {name:?} of function {function:?}: {detail}"
        ))
    })?;
    Ok(array)
}

/// Writes `data` (row-major, of `shape`) into `array`, whose shape the
/// caller checked, with the strides of the buffer Core ML hands out.
fn scatter_into<T: Scalar>(
    array: &MLMultiArray,
    data: &[T],
    shape: &[usize],
) -> Result<(), String> {
    if strides::has_no_elements(shape) {
        return Ok(());
    }
    let outcome: RefCell<Result<(), String>> =
        RefCell::new(Err("Core ML did not call the buffer block".to_string()));
    let block = StackBlock::new(
        |bytes: NonNull<c_void>, size: NSInteger, block_strides: NonNull<NSArray<NSNumber>>| {
            let result = guarded(|| {
                // SAFETY: Core ML passes the strides of the buffer it hands
                // this block, valid while the block runs.
                let block_strides = integers(unsafe { block_strides.as_ref() });
                let block_strides = strides::strides_from_isize(shape, &block_strides)
                    .map_err(|e| e.to_string())?;
                let size = usize::try_from(size).map_err(|_| format!("buffer size {size}"))?;
                // SAFETY: Core ML documents `bytes` as the array's backing
                // buffer, `size` bytes, writable by this block alone until
                // it returns, and a new array's contents as uninitialised:
                // hence `MaybeUninit<u8>`, which any memory is, and which
                // needs no alignment. `scatter` only writes, each write
                // checked against `size` first.
                let buffer = unsafe {
                    std::slice::from_raw_parts_mut(bytes.as_ptr().cast::<MaybeUninit<u8>>(), size)
                };
                strides::scatter(data, shape, &block_strides, buffer).map_err(|e| e.to_string())
            });
            *outcome.borrow_mut() = result;
        },
    );
    // SAFETY: the caller holds the array exclusively (a new one, or a state
    // buffer inside its handler); the block writes only inside the
    // buffer Core ML passes it, honouring the strides passed with it (the
    // method may switch to a new backing buffer with other strides).
    catching("writing an array's buffer", || unsafe {
        array.getMutableBytesWithHandler(&block)
    })
    .map_err(|e| e.to_string())?;
    outcome.into_inner()
}

/// The contents of an `MLMultiArray`, row-major, read with its own strides.
pub(super) fn read(array: &MLMultiArray) -> Result<AnyTensor, String> {
    // SAFETY: a property read of a valid array.
    let data_type = unsafe { array.dataType() };
    match raw::data_type_of_multi_array(data_type.0) {
        Some(DataType::Float16) => gather::<f16>(array).map(AnyTensor::from),
        Some(DataType::Float32) => gather::<f32>(array).map(AnyTensor::from),
        Some(DataType::Float64) => gather::<f64>(array).map(AnyTensor::from),
        Some(DataType::Int32) => gather::<i32>(array).map(AnyTensor::from),
        Some(DataType::Int8) => gather::<i8>(array).map(AnyTensor::from),
        None => Err(format!(
            "an MLMultiArray of data type {:#x}, which this crate does not read",
            data_type.0
        )),
    }
}

fn gather<T: Element + Scalar>(array: &MLMultiArray) -> Result<Tensor<T>, String> {
    let shape = shape_of(array)?;
    if strides::has_no_elements(&shape) {
        // Nothing to read, and Core ML need not call the block for it.
        return Tensor::new(shape, Vec::new()).map_err(|e| e.to_string());
    }
    let outcome: RefCell<Result<Vec<T>, String>> =
        RefCell::new(Err("Core ML did not call the buffer block".to_string()));
    let block = StackBlock::new(|bytes: NonNull<c_void>, size: NSInteger| {
        let result = guarded(|| {
            // The strides of the buffer being read, as Apple's example for
            // this method reads them: inside the block.
            // SAFETY: a property read of a valid array.
            let array_strides = unsafe { array.strides() };
            let array_strides = integers(&array_strides);
            let array_strides =
                strides::strides_from_isize(&shape, &array_strides).map_err(|e| e.to_string())?;
            let size = usize::try_from(size).map_err(|_| format!("buffer size {size}"))?;
            // SAFETY: Core ML documents `bytes` as the array's buffer,
            // readable for `size` bytes while the block runs. Its padding
            // may never have been written, so it is viewed as
            // `MaybeUninit<u8>` (no alignment needed).
            let buffer = unsafe {
                std::slice::from_raw_parts(
                    bytes.as_ptr().cast::<MaybeUninit<u8>>().cast_const(),
                    size,
                )
            };
            // SAFETY: every element of an array Core ML hands out was
            // written: an output it computed, or a state buffer, which
            // Core ML documents as zero-initialised and which predictions
            // and writes only overwrite. `gather` reads only elements,
            // never padding, after checking the layout against `size`.
            unsafe { strides::gather::<T>(buffer, &shape, &array_strides) }
                .map_err(|e| e.to_string())
        });
        *outcome.borrow_mut() = result;
    });
    // SAFETY: the block only reads inside the buffer Core ML passes it.
    catching("reading an array's buffer", || unsafe {
        array.getBytesWithHandler(&block)
    })
    .map_err(|e| e.to_string())?;
    let data = outcome.into_inner()?;
    Tensor::new(shape, data).map_err(|e| e.to_string())
}

/// A copy of state buffer `name` (one of the state's names: the caller
/// checks), read with the buffer's own strides.
pub(super) fn read_state(state: &MLState, name: &str) -> Result<AnyTensor, String> {
    let outcome: RefCell<Result<AnyTensor, String>> =
        RefCell::new(Err("Core ML did not call the state block".to_string()));
    let block = StackBlock::new(|buffer: NonNull<MLMultiArray>| {
        let result = guarded(|| {
            // SAFETY: Core ML passes a valid array viewing the state buffer,
            // usable only while the block runs, which is all `read` does.
            read(unsafe { buffer.as_ref() })
        });
        *outcome.borrow_mut() = result;
    });
    // SAFETY: `name` is a state of the function (checked by the caller, so
    // Core ML knows it; an unknown one raises, which the caller's `catching`
    // turns into an error); no prediction can run on this state meanwhile
    // (predictions take `&mut State`, this `&State`, and a prediction left
    // running by a dropped future was waited for), and the block touches
    // the buffer only inside. Core ML holds the state's buffer lock while
    // the block runs: the block never calls back into this state.
    unsafe { state.getMultiArrayForStateNamed_handler(&NSString::from_str(name), &block) };
    outcome.into_inner()
}

/// Replaces state buffer `name` (one of the state's names: the caller
/// checks) with `tensor`, which must have the buffer's element type and
/// shape; written with the buffer's own strides.
pub(super) fn write_state(state: &MLState, name: &str, tensor: &AnyTensor) -> Result<(), String> {
    let outcome: RefCell<Result<(), String>> =
        RefCell::new(Err("Core ML did not call the state block".to_string()));
    let block = StackBlock::new(|buffer: NonNull<MLMultiArray>| {
        let result = guarded(|| {
            // SAFETY: Core ML passes a valid array viewing the state buffer,
            // usable only while the block runs, which is all this does.
            let array = unsafe { buffer.as_ref() };
            let shape = shape_of(array)?;
            // SAFETY: a property read of a valid array.
            let data_type = raw::data_type_of_multi_array(unsafe { array.dataType() }.0);
            if data_type != Some(tensor.data_type()) || shape != tensor.shape() {
                return Err(format!(
                    "state {name:?} holds {} {shape:?}, not {} {:?}",
                    data_type.map_or("an unknown type", DataType::name),
                    tensor.data_type(),
                    tensor.shape()
                ));
            }
            match tensor {
                AnyTensor::Float16(t) => scatter_into(array, t.as_slice(), &shape),
                AnyTensor::Float32(t) => scatter_into(array, t.as_slice(), &shape),
                AnyTensor::Float64(t) => scatter_into(array, t.as_slice(), &shape),
                AnyTensor::Int32(t) => scatter_into(array, t.as_slice(), &shape),
                AnyTensor::Int8(t) => scatter_into(array, t.as_slice(), &shape),
            }
        });
        *outcome.borrow_mut() = result;
    });
    // SAFETY: as in `read_state`; writing takes `&mut State`, so no
    // prediction or read runs on this state meanwhile.
    unsafe { state.getMultiArrayForStateNamed_handler(&NSString::from_str(name), &block) };
    outcome.into_inner()
}
