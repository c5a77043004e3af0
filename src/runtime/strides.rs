//! The pure, platform-independent half of the Core ML backend: multi-array
//! memory layout (strides, strided gather and scatter), image pixel rows,
//! and the raw values of the Core ML enums this crate maps to.
//!
//! Nothing here calls Core ML, so all of it compiles and is unit-tested on
//! every host; the Core ML backend (`runtime::coreml`, Apple targets only)
//! calls it from inside the scoped buffer blocks of `MLMultiArray` and
//! `CVPixelBuffer`, and checks at compile time that the raw values below
//! equal the named constants of the Apple SDK bindings.
//!
//! Every function here validates its layout before touching memory and
//! returns a [`LayoutError`] instead of panicking: a panic inside an
//! Objective-C block would have to unwind through Apple's frames.
//!
//! Buffers are `[MaybeUninit<u8>]`: Core ML hands out memory it documents
//! as uninitialised (a new `MLMultiArray`'s, a new `CVPixelBuffer`'s), and
//! padding between rows or elements that nothing may ever have written.
//! Writers only write; readers read only the bytes of elements (or pixels)
//! their callers vouch were written, which is why they are `unsafe`.

use std::fmt;
use std::mem::MaybeUninit;

use half::f16;

use super::value::{Image, PixelFormat};
#[cfg(test)]
use super::ComputeUnits;
use coreml_multifunction_format::DataType;

/// A buffer whose layout does not fit its shape, strides or size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutError(String);

impl LayoutError {
    fn new(detail: impl Into<String>) -> Self {
        LayoutError(detail.into())
    }
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LayoutError {}

#[cfg(test)]
/// The row-major ("first-major") strides of `shape`, in elements: what
/// `MLMultiArray initWithShape:dataType:error:` documents it allocates.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut step = 1usize;
    for (stride, &dim) in strides.iter_mut().zip(shape).rev() {
        *stride = step;
        step = step.saturating_mul(dim);
    }
    strides
}

/// Whether an array of `shape` has no elements (a dimension of 0). Such an
/// array needs no buffer access: Core ML may call a buffer block with no
/// buffer for it, or not call it at all, so its contents (none) are known
/// without asking, and writing it is nothing to do.
pub fn has_no_elements(shape: &[usize]) -> bool {
    shape.contains(&0)
}

/// Whether `strides` lay `shape` out contiguously in row-major order.
/// Dimensions of size 1 may have any stride, since it is never applied.
pub fn is_contiguous(shape: &[usize], strides: &[usize]) -> bool {
    if shape.len() != strides.len() {
        return false;
    }
    let mut expected = 1usize;
    for (&dim, &stride) in shape.iter().zip(strides).rev() {
        if dim != 1 && stride != expected {
            return false;
        }
        expected = expected.saturating_mul(dim);
    }
    true
}

/// Converts strides as Core ML reports them (`NSInteger`s) to element
/// counts, refusing negative ones (Core ML documents none) and a rank
/// other than the shape's.
pub fn strides_from_isize(shape: &[usize], strides: &[isize]) -> Result<Vec<usize>, LayoutError> {
    if shape.len() != strides.len() {
        return Err(LayoutError::new(format!(
            "{} strides for a shape of rank {}",
            strides.len(),
            shape.len()
        )));
    }
    strides
        .iter()
        .map(|&s| usize::try_from(s).map_err(|_| LayoutError::new(format!("negative stride {s}"))))
        .collect()
}

/// The number of elements a buffer must hold for `shape` laid out with
/// `strides`: one past the largest offset reached (0 for an empty shape).
pub fn span(shape: &[usize], strides: &[usize]) -> Result<usize, LayoutError> {
    if shape.len() != strides.len() {
        return Err(LayoutError::new(format!(
            "{} strides for a shape of rank {}",
            strides.len(),
            shape.len()
        )));
    }
    if shape.contains(&0) {
        return Ok(0);
    }
    let overflow = || {
        LayoutError::new(format!(
            "shape {shape:?} with strides {strides:?} overflows"
        ))
    };
    shape
        .iter()
        .zip(strides)
        .try_fold(1usize, |last, (&dim, &stride)| {
            (dim - 1)
                .checked_mul(stride)
                .and_then(|reach| last.checked_add(reach))
        })
        .ok_or_else(overflow)
}

/// Checks that a buffer of `buffer_bytes` bytes holds `shape` laid out with
/// `strides`, `element_size` bytes an element.
pub fn check_fits(
    shape: &[usize],
    strides: &[usize],
    element_size: usize,
    buffer_bytes: usize,
) -> Result<(), LayoutError> {
    let needed = span(shape, strides)?
        .checked_mul(element_size)
        .ok_or_else(|| LayoutError::new("buffer size overflows"))?;
    if needed > buffer_bytes {
        return Err(LayoutError::new(format!(
            "shape {shape:?} with strides {strides:?} needs {needed} bytes, the buffer has {buffer_bytes}"
        )));
    }
    Ok(())
}

mod sealed {
    pub trait Sealed {}
}

/// An element type of multi-array buffers, read and written in native byte
/// order (Core ML's buffers are in the machine's order).
///
/// # Safety
///
/// Implemented only for plain numbers (sealed): every bit pattern of
/// `SIZE` bytes is a valid value, with no padding, so bytes may be copied
/// into a `Vec<Self>` directly.
pub unsafe trait Scalar: sealed::Sealed + Copy + Default + 'static {
    /// Bytes per element.
    const SIZE: usize;
    /// Reads one element from exactly `SIZE` bytes.
    fn read(bytes: &[u8]) -> Self;
    /// Writes one element into exactly `SIZE` bytes.
    fn write(self, bytes: &mut [MaybeUninit<u8>]);
}

/// The bytes of `bytes`, as initialised.
///
/// # Safety
///
/// Every byte of `bytes` has been written.
unsafe fn assume_init(bytes: &[MaybeUninit<u8>]) -> &[u8] {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and the caller
    // guarantees every byte is initialised.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<u8>(), bytes.len()) }
}

/// Writes `source` into the start of `target` (the caller checked the
/// length).
fn write_bytes(target: &mut [MaybeUninit<u8>], source: &[u8]) {
    for (t, &s) in target.iter_mut().zip(source) {
        t.write(s);
    }
}

macro_rules! scalar {
    ($type:ty, $size:literal, $read:expr, $write:expr) => {
        impl sealed::Sealed for $type {}
        // SAFETY: a plain number type of $size bytes without padding; every
        // bit pattern is a valid value.
        unsafe impl Scalar for $type {
            const SIZE: usize = $size;
            fn read(bytes: &[u8]) -> Self {
                let mut raw = [0u8; $size];
                raw.copy_from_slice(bytes);
                ($read)(raw)
            }
            fn write(self, bytes: &mut [MaybeUninit<u8>]) {
                write_bytes(bytes, &($write)(self));
            }
        }
    };
}

scalar!(f16, 2, f16::from_ne_bytes, f16::to_ne_bytes);
scalar!(f32, 4, f32::from_ne_bytes, f32::to_ne_bytes);
scalar!(f64, 8, f64::from_ne_bytes, f64::to_ne_bytes);
scalar!(i32, 4, i32::from_ne_bytes, i32::to_ne_bytes);
scalar!(i8, 1, i8::from_ne_bytes, i8::to_ne_bytes);

/// Copies contiguous bytes into a new vector of elements.
///
/// # Safety
///
/// The first `count * T::SIZE` bytes of `bytes` are initialised.
unsafe fn copy_contiguous<T: Scalar>(bytes: &[MaybeUninit<u8>], count: usize) -> Vec<T> {
    let len = count * T::SIZE;
    debug_assert!(bytes.len() >= len);
    let source = &bytes[..len.min(bytes.len())];
    let mut out = Vec::<T>::with_capacity(count);
    // SAFETY: `out` has capacity for `count` elements, that is
    // `count * T::SIZE` bytes (`Scalar` types have no padding); `source`
    // holds at most that many bytes (the `min` above keeps the copy in
    // bounds regardless), all initialised (the caller's guarantee); the
    // regions cannot overlap, `out` being fresh; and every bit pattern is a
    // valid `T` (`Scalar`'s contract), so all `source.len() / T::SIZE`
    // elements are initialised before `set_len`.
    unsafe {
        std::ptr::copy_nonoverlapping(
            source.as_ptr().cast::<u8>(),
            out.as_mut_ptr().cast::<u8>(),
            source.len(),
        );
        out.set_len(source.len() / T::SIZE);
    }
    out
}

/// Calls `visit(element_offset, row_major_index_of_row_start)` for each
/// innermost row of `shape` laid out with `strides` (shape non-empty, no
/// zero dimension, layout checked by [`check_fits`]).
fn for_each_row(shape: &[usize], strides: &[usize], mut visit: impl FnMut(usize, usize)) {
    // A dimension of size 1 never applies its stride, which may then be
    // anything: zero it so the running offset below cannot overflow. With
    // that, every offset stays below twice the checked span.
    let strides: Vec<usize> = shape
        .iter()
        .zip(strides)
        .map(|(&dim, &stride)| if dim == 1 { 0 } else { stride })
        .collect();
    let rank = shape.len();
    let row = shape[rank - 1];
    let rows: usize = shape[..rank - 1].iter().product();
    let mut index = vec![0usize; rank.saturating_sub(1)];
    let mut offset = 0usize;
    for r in 0..rows {
        visit(offset, r * row);
        // Odometer increment over the outer dimensions, keeping `offset`
        // in step.
        for axis in (0..rank - 1).rev() {
            index[axis] += 1;
            offset += strides[axis];
            if index[axis] < shape[axis] {
                break;
            }
            offset -= strides[axis] * shape[axis];
            index[axis] = 0;
        }
    }
}

/// Reads the elements of `shape`, laid out in `bytes` with `strides` (in
/// elements), into a row-major vector. Only the elements' bytes are read,
/// never the padding between them.
///
/// Contiguous buffers are copied whole; buffers whose innermost stride is
/// 1 (the row-padded layout the Neural Engine produces) row by row; others
/// element by element.
///
/// # Safety
///
/// The bytes of every element of `shape` at `strides` are initialised, as
/// they are in an array Core ML filled. (The layout itself is checked
/// against `bytes.len()`: a wrong one is an error, never a read out of
/// bounds.)
pub unsafe fn gather<T: Scalar>(
    bytes: &[MaybeUninit<u8>],
    shape: &[usize],
    strides: &[usize],
) -> Result<Vec<T>, LayoutError> {
    check_fits(shape, strides, T::SIZE, bytes.len())?;
    let count = super::tensor::element_count(shape)
        .map_err(|_| LayoutError::new(format!("shape {shape:?} overflows")))?;
    if count == 0 {
        return Ok(Vec::new());
    }
    if shape.is_empty() || is_contiguous(shape, strides) {
        // SAFETY: contiguous, the elements are the first `count * SIZE`
        // bytes, initialised by the caller's guarantee.
        return Ok(unsafe { copy_contiguous(bytes, count) });
    }
    let rank = shape.len();
    let row = shape[rank - 1];
    let inner = strides[rank - 1];
    // SAFETY (each `assume_init` below): the bytes of one element, or of a
    // row of elements with unit stride, which the caller guarantees were
    // written.
    let element = |start: usize| T::read(unsafe { assume_init(&bytes[start..start + T::SIZE]) });
    let mut out = Vec::with_capacity(count);
    for_each_row(shape, strides, |offset, _| {
        if inner == 1 || row == 1 {
            let start = offset * T::SIZE;
            let row_bytes = unsafe { assume_init(&bytes[start..start + row * T::SIZE]) };
            out.extend(row_bytes.chunks_exact(T::SIZE).map(T::read));
        } else {
            out.extend((0..row).map(|i| element((offset + i * inner) * T::SIZE)));
        }
    });
    Ok(out)
}

/// Writes row-major `values` of `shape` into `bytes`, laid out with
/// `strides` (in elements). Bytes between strided elements are left as
/// they are (uninitialised, if they were).
pub fn scatter<T: Scalar>(
    values: &[T],
    shape: &[usize],
    strides: &[usize],
    bytes: &mut [MaybeUninit<u8>],
) -> Result<(), LayoutError> {
    check_fits(shape, strides, T::SIZE, bytes.len())?;
    let count = super::tensor::element_count(shape)
        .map_err(|_| LayoutError::new(format!("shape {shape:?} overflows")))?;
    if count != values.len() {
        return Err(LayoutError::new(format!(
            "{} values for shape {shape:?}",
            values.len()
        )));
    }
    if count == 0 {
        return Ok(());
    }
    if shape.is_empty() || is_contiguous(shape, strides) {
        for (value, out) in values.iter().zip(bytes.chunks_exact_mut(T::SIZE)) {
            value.write(out);
        }
        return Ok(());
    }
    let rank = shape.len();
    let row = shape[rank - 1];
    let inner = strides[rank - 1];
    for_each_row(shape, strides, |offset, first| {
        for (i, value) in values[first..first + row].iter().enumerate() {
            let start = (offset + i * inner) * T::SIZE;
            value.write(&mut bytes[start..start + T::SIZE]);
        }
    });
    Ok(())
}

/// Raw values of the Core ML and Core Video enums the backend uses, as the
/// Apple SDK headers define them. The Core ML module asserts at compile time
/// that the `objc2-core-ml` / `objc2-core-video` named constants equal
/// these, and always passes the named constants to Apple's APIs.
pub mod raw {
    use super::DataType;

    /// `MLMultiArrayDataTypeFloat16` (`0x10000 | 16`).
    pub const MULTI_ARRAY_FLOAT16: isize = 0x10000 | 16;
    /// `MLMultiArrayDataTypeFloat32` (`0x10000 | 32`).
    pub const MULTI_ARRAY_FLOAT32: isize = 0x10000 | 32;
    /// `MLMultiArrayDataTypeFloat64` / `Double` (`0x10000 | 64`).
    pub const MULTI_ARRAY_FLOAT64: isize = 0x10000 | 64;
    /// `MLMultiArrayDataTypeInt32` (`0x20000 | 32`).
    pub const MULTI_ARRAY_INT32: isize = 0x20000 | 32;
    /// `MLMultiArrayDataTypeInt8` (`0x20000 | 8`; macOS / iOS 26 SDKs).
    pub const MULTI_ARRAY_INT8: isize = 0x20000 | 8;

    /// `MLComputeUnitsCPUOnly`.
    pub const COMPUTE_UNITS_CPU_ONLY: isize = 0;
    /// `MLComputeUnitsCPUAndGPU`.
    pub const COMPUTE_UNITS_CPU_AND_GPU: isize = 1;
    /// `MLComputeUnitsAll`.
    pub const COMPUTE_UNITS_ALL: isize = 2;
    /// `MLComputeUnitsCPUAndNeuralEngine` (macOS 13 / iOS 16).
    pub const COMPUTE_UNITS_CPU_AND_NEURAL_ENGINE: isize = 3;

    /// `kCVPixelFormatType_32BGRA` (`'BGRA'`).
    pub const PIXEL_FORMAT_32BGRA: u32 = u32::from_be_bytes(*b"BGRA");
    /// `kCVPixelFormatType_32ARGB` (`0x20`).
    pub const PIXEL_FORMAT_32ARGB: u32 = 0x0000_0020;
    /// `kCVPixelFormatType_OneComponent8` (`'L008'`).
    pub const PIXEL_FORMAT_ONE_COMPONENT_8: u32 = u32::from_be_bytes(*b"L008");
    /// `kCVPixelFormatType_OneComponent16Half` (`'L00h'`).
    pub const PIXEL_FORMAT_ONE_COMPONENT_16_HALF: u32 = u32::from_be_bytes(*b"L00h");

    #[cfg(test)]
    /// The `MLMultiArrayDataType` raw value of an element type.
    pub fn multi_array_data_type(data_type: DataType) -> isize {
        match data_type {
            DataType::Float16 => MULTI_ARRAY_FLOAT16,
            DataType::Float32 => MULTI_ARRAY_FLOAT32,
            DataType::Float64 => MULTI_ARRAY_FLOAT64,
            DataType::Int32 => MULTI_ARRAY_INT32,
            DataType::Int8 => MULTI_ARRAY_INT8,
        }
    }

    /// The element type of an `MLMultiArrayDataType` raw value.
    pub fn data_type_of_multi_array(raw: isize) -> Option<DataType> {
        match raw {
            MULTI_ARRAY_FLOAT16 => Some(DataType::Float16),
            MULTI_ARRAY_FLOAT32 => Some(DataType::Float32),
            MULTI_ARRAY_FLOAT64 => Some(DataType::Float64),
            MULTI_ARRAY_INT32 => Some(DataType::Int32),
            MULTI_ARRAY_INT8 => Some(DataType::Int8),
            _ => None,
        }
    }

    #[cfg(test)]
    /// The `MLComputeUnits` raw value of a [`ComputeUnits`].
    pub fn compute_units(units: super::ComputeUnits) -> isize {
        use super::ComputeUnits;
        match units {
            ComputeUnits::CpuOnly => COMPUTE_UNITS_CPU_ONLY,
            ComputeUnits::CpuAndGpu => COMPUTE_UNITS_CPU_AND_GPU,
            ComputeUnits::All => COMPUTE_UNITS_ALL,
            ComputeUnits::CpuAndNeuralEngine => COMPUTE_UNITS_CPU_AND_NEURAL_ENGINE,
        }
    }

    /// The Core Video pixel format a pixel buffer for an image of `format`
    /// is created in: Core ML takes 32BGRA for RGB and BGR image features,
    /// OneComponent8 for grayscale and OneComponent16Half for fp16
    /// grayscale.
    pub fn pixel_format_for(format: super::PixelFormat) -> u32 {
        match format {
            super::PixelFormat::Rgb8 | super::PixelFormat::Bgr8 => PIXEL_FORMAT_32BGRA,
            super::PixelFormat::Gray8 => PIXEL_FORMAT_ONE_COMPONENT_8,
            super::PixelFormat::GrayF16 => PIXEL_FORMAT_ONE_COMPONENT_16_HALF,
        }
    }
}

/// Bytes per pixel of a Core Video pixel format this crate reads or
/// writes, `None` for others.
pub fn pixel_buffer_bytes_per_pixel(pixel_format: u32) -> Option<usize> {
    match pixel_format {
        raw::PIXEL_FORMAT_32BGRA | raw::PIXEL_FORMAT_32ARGB => Some(4),
        raw::PIXEL_FORMAT_ONE_COMPONENT_8 => Some(1),
        raw::PIXEL_FORMAT_ONE_COMPONENT_16_HALF => Some(2),
        _ => None,
    }
}

/// The image format a pixel buffer of `pixel_format` is read as when the
/// model's description names none: RGB for 32BGRA and 32ARGB, grayscale
/// for OneComponent8, fp16 grayscale for OneComponent16Half.
pub fn default_pixel_format(pixel_format: u32) -> Option<PixelFormat> {
    match pixel_format {
        raw::PIXEL_FORMAT_32BGRA | raw::PIXEL_FORMAT_32ARGB => Some(PixelFormat::Rgb8),
        raw::PIXEL_FORMAT_ONE_COMPONENT_8 => Some(PixelFormat::Gray8),
        raw::PIXEL_FORMAT_ONE_COMPONENT_16_HALF => Some(PixelFormat::GrayF16),
        _ => None,
    }
}

fn check_rows(
    width: usize,
    height: usize,
    bytes_per_pixel: usize,
    bytes_per_row: usize,
    buffer_bytes: usize,
) -> Result<(), LayoutError> {
    let row = width
        .checked_mul(bytes_per_pixel)
        .ok_or_else(|| LayoutError::new("image row size overflows"))?;
    if row > bytes_per_row {
        return Err(LayoutError::new(format!(
            "rows of {row} bytes do not fit {bytes_per_row} bytes per row"
        )));
    }
    if height == 0 {
        return Ok(());
    }
    let needed = (height - 1)
        .checked_mul(bytes_per_row)
        .and_then(|n| n.checked_add(row))
        .ok_or_else(|| LayoutError::new("image size overflows"))?;
    if needed > buffer_bytes {
        return Err(LayoutError::new(format!(
            "{height} rows of {bytes_per_row} bytes need {needed} bytes, the buffer has {buffer_bytes}"
        )));
    }
    Ok(())
}

/// Writes `image` into a pixel buffer of `pixel_format` (one of
/// [`raw::pixel_format_for`]) whose rows are `bytes_per_row` apart.
/// RGB and BGR pixels become BGRA with alpha 255.
pub fn write_pixels(
    image: &Image,
    pixel_format: u32,
    bytes_per_row: usize,
    out: &mut [MaybeUninit<u8>],
) -> Result<(), LayoutError> {
    let source_bpp = image.format.bytes_per_pixel();
    let expected = image
        .width
        .checked_mul(image.height)
        .and_then(|n| n.checked_mul(source_bpp));
    if expected != Some(image.pixels.len()) {
        return Err(LayoutError::new(format!(
            "a {}x{} {:?} image needs {} bytes of pixels, not {}",
            image.width,
            image.height,
            image.format,
            expected.map_or("too many".to_string(), |n| n.to_string()),
            image.pixels.len()
        )));
    }
    if pixel_format != raw::pixel_format_for(image.format) {
        return Err(LayoutError::new(format!(
            "a {:?} image cannot be written as pixel format {pixel_format:#x}",
            image.format
        )));
    }
    let target_bpp = pixel_buffer_bytes_per_pixel(pixel_format)
        .ok_or_else(|| LayoutError::new(format!("unsupported pixel format {pixel_format:#x}")))?;
    check_rows(
        image.width,
        image.height,
        target_bpp,
        bytes_per_row,
        out.len(),
    )?;
    if image.width == 0 {
        return Ok(());
    }
    let source_row = image.width * source_bpp;
    for (y, source) in image.pixels.chunks_exact(source_row).enumerate() {
        let start = y * bytes_per_row;
        let target = &mut out[start..start + image.width * target_bpp];
        match image.format {
            PixelFormat::Rgb8 => {
                for (s, t) in source.chunks_exact(3).zip(target.chunks_exact_mut(4)) {
                    write_bytes(t, &[s[2], s[1], s[0], 255]);
                }
            }
            PixelFormat::Bgr8 => {
                for (s, t) in source.chunks_exact(3).zip(target.chunks_exact_mut(4)) {
                    write_bytes(t, &[s[0], s[1], s[2], 255]);
                }
            }
            PixelFormat::Gray8 | PixelFormat::GrayF16 => write_bytes(target, source),
        }
    }
    Ok(())
}

/// Reads a pixel buffer of `pixel_format`, `width` x `height`, rows
/// `bytes_per_row` apart, into an image of `format` (alpha dropped). Only
/// each row's pixels are read, never the padding after them.
///
/// # Safety
///
/// The pixel bytes of every row (`width` pixels from each row's start) are
/// initialised, as they are in a buffer Core ML or [`write_pixels`] filled.
pub unsafe fn read_pixels(
    pixels: &[MaybeUninit<u8>],
    pixel_format: u32,
    width: usize,
    height: usize,
    bytes_per_row: usize,
    format: PixelFormat,
) -> Result<Image, LayoutError> {
    let source_bpp = pixel_buffer_bytes_per_pixel(pixel_format)
        .ok_or_else(|| LayoutError::new(format!("unsupported pixel format {pixel_format:#x}")))?;
    check_rows(width, height, source_bpp, bytes_per_row, pixels.len())?;
    let target_bpp = format.bytes_per_pixel();
    let compatible = matches!(
        (pixel_format, format),
        (
            raw::PIXEL_FORMAT_32BGRA | raw::PIXEL_FORMAT_32ARGB,
            PixelFormat::Rgb8 | PixelFormat::Bgr8
        ) | (raw::PIXEL_FORMAT_ONE_COMPONENT_8, PixelFormat::Gray8)
            | (
                raw::PIXEL_FORMAT_ONE_COMPONENT_16_HALF,
                PixelFormat::GrayF16
            )
    );
    if !compatible {
        return Err(LayoutError::new(format!(
            "pixel format {pixel_format:#x} cannot be read as a {format:?} image"
        )));
    }
    let mut out = Vec::with_capacity(width * height * target_bpp);
    for y in 0..height {
        let start = y * bytes_per_row;
        // SAFETY: one row's pixels, which the caller guarantees were
        // written (`check_rows` keeps the range in bounds).
        let row = unsafe { assume_init(&pixels[start..start + width * source_bpp]) };
        match (pixel_format, format) {
            (raw::PIXEL_FORMAT_32BGRA, PixelFormat::Rgb8) => row
                .chunks_exact(4)
                .for_each(|p| out.extend_from_slice(&[p[2], p[1], p[0]])),
            (raw::PIXEL_FORMAT_32BGRA, _) => row
                .chunks_exact(4)
                .for_each(|p| out.extend_from_slice(&[p[0], p[1], p[2]])),
            (raw::PIXEL_FORMAT_32ARGB, PixelFormat::Rgb8) => row
                .chunks_exact(4)
                .for_each(|p| out.extend_from_slice(&[p[1], p[2], p[3]])),
            (raw::PIXEL_FORMAT_32ARGB, _) => row
                .chunks_exact(4)
                .for_each(|p| out.extend_from_slice(&[p[3], p[2], p[1]])),
            _ => out.extend_from_slice(row),
        }
    }
    Ok(Image {
        width,
        height,
        format,
        pixels: out,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn arrays_without_elements_need_no_buffer() {
        assert!(has_no_elements(&[1, 0, 16]));
        assert!(has_no_elements(&[0]));
        assert!(!has_no_elements(&[1, 16]));
        // A scalar (rank 0) has one element.
        assert!(!has_no_elements(&[]));
        // What such an array reads as: a tensor of its shape, no data.
        let empty = crate::runtime::Tensor::<f32>::new([1, 0, 16], Vec::new()).unwrap();
        assert_eq!(empty.shape(), &[1, 0, 16]);
        assert!(empty.as_slice().is_empty());
    }

    use super::*;

    /// A fully initialised buffer of `len` bytes of `fill`.
    fn filled(len: usize, fill: u8) -> Vec<MaybeUninit<u8>> {
        vec![MaybeUninit::new(fill); len]
    }

    /// The bytes of a buffer these tests initialised in full.
    fn init(buffer: &[MaybeUninit<u8>]) -> Vec<u8> {
        // SAFETY: every buffer of these tests starts from `filled`.
        unsafe { assume_init(buffer) }.to_vec()
    }

    fn bytes_of<T: Scalar>(values: &[T]) -> Vec<MaybeUninit<u8>> {
        let mut out = filled(values.len() * T::SIZE, 0);
        for (v, chunk) in values.iter().zip(out.chunks_exact_mut(T::SIZE)) {
            v.write(chunk);
        }
        out
    }

    /// `gather` over a buffer these tests initialised in full.
    fn gathered<T: Scalar>(
        bytes: &[MaybeUninit<u8>],
        shape: &[usize],
        strides: &[usize],
    ) -> Result<Vec<T>, LayoutError> {
        // SAFETY: every byte is initialised (`filled`, `bytes_of`).
        unsafe { gather(bytes, shape, strides) }
    }

    /// `read_pixels` over a buffer these tests initialised in full.
    fn pixels_of(
        pixels: &[MaybeUninit<u8>],
        pixel_format: u32,
        width: usize,
        height: usize,
        bytes_per_row: usize,
        format: PixelFormat,
    ) -> Result<Image, LayoutError> {
        // SAFETY: every byte is initialised (`filled`).
        unsafe { read_pixels(pixels, pixel_format, width, height, bytes_per_row, format) }
    }

    #[test]
    fn contiguous_strides_are_row_major() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(contiguous_strides(&[5]), vec![1]);
        assert_eq!(contiguous_strides(&[]), Vec::<usize>::new());
        assert!(is_contiguous(&[2, 3, 4], &[12, 4, 1]));
        // A dimension of 1 never applies its stride.
        assert!(is_contiguous(&[1, 3, 4], &[99, 4, 1]));
        assert!(!is_contiguous(&[2, 3, 4], &[16, 4, 1]));
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
    }

    #[test]
    fn spans_and_fits_are_checked() {
        assert_eq!(span(&[2, 3, 4], &[12, 4, 1]), Ok(24));
        assert_eq!(span(&[2, 3], &[8, 1]), Ok(11));
        assert_eq!(span(&[2, 0, 3], &[1, 1, 1]), Ok(0));
        assert_eq!(span(&[], &[]), Ok(1));
        assert!(span(&[2], &[usize::MAX]).is_err());
        assert!(span(&[2, 3], &[1]).is_err());
        assert!(check_fits(&[2, 3], &[8, 1], 4, 44).is_ok());
        assert!(check_fits(&[2, 3], &[8, 1], 4, 43).is_err());
        assert!(strides_from_isize(&[2, 3], &[3, -1]).is_err());
        assert_eq!(strides_from_isize(&[2, 3], &[3, 1]), Ok(vec![3, 1]));
    }

    #[test]
    fn contiguous_gather_is_a_copy() {
        let values: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let bytes = bytes_of(&values);
        assert_eq!(
            gathered::<f32>(&bytes, &[2, 3, 4], &[12, 4, 1]).unwrap(),
            values
        );
        // Trailing bytes past the span are ignored.
        let mut longer = bytes.clone();
        longer.extend(filled(7, 0xff));
        assert_eq!(
            gathered::<f32>(&longer, &[2, 3, 4], &[12, 4, 1]).unwrap(),
            values
        );
        assert!(gathered::<f32>(&bytes[..95], &[2, 3, 4], &[12, 4, 1]).is_err());
    }

    #[test]
    fn row_padded_gather_skips_the_padding() {
        // A [2, 3] fp16 array whose rows are padded to 8 elements, as the
        // Neural Engine lays out outputs.
        let mut padded = vec![f16::from_f32(-1.0); 2 * 8];
        for r in 0..2 {
            for c in 0..3 {
                padded[r * 8 + c] = f16::from_f32((r * 10 + c) as f32);
            }
        }
        let bytes = bytes_of(&padded);
        let got = gathered::<f16>(&bytes[..(8 + 3) * 2], &[2, 3], &[8, 1]).unwrap();
        let want: Vec<f16> = [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn padding_that_was_never_written_is_never_read() {
        // A row-padded [2, 3] fp16 layout in memory nothing initialised, as
        // Core ML hands out a new array: scatter writes only the elements,
        // and gather reads only them back (under Miri, reading a padding
        // byte would be reported as undefined behaviour).
        let values: Vec<f16> = (0..6).map(|v| f16::from_f32(v as f32)).collect();
        let mut buffer = vec![MaybeUninit::<u8>::uninit(); (8 + 3) * 2];
        scatter(&values, &[2, 3], &[8, 1], &mut buffer).unwrap();
        // SAFETY: `scatter` wrote every element of this layout.
        let got = unsafe { gather::<f16>(&buffer, &[2, 3], &[8, 1]) }.unwrap();
        assert_eq!(got, values);
        // Image rows padded past their pixels, likewise.
        let image = Image::new(1, 2, PixelFormat::Gray8, vec![5, 6]).unwrap();
        let format = raw::pixel_format_for(image.format);
        let mut pixels = vec![MaybeUninit::<u8>::uninit(); 16 + 1];
        write_pixels(&image, format, 16, &mut pixels).unwrap();
        // SAFETY: `write_pixels` wrote each row's pixels.
        let back = unsafe { read_pixels(&pixels, format, 1, 2, 16, PixelFormat::Gray8) }.unwrap();
        assert_eq!(back, image);
    }

    #[test]
    fn general_strided_gather_and_scatter_round_trip() {
        // A transposed [3, 2] view of a row-major [2, 3] buffer.
        let storage: Vec<i32> = vec![0, 1, 2, 10, 11, 12];
        let bytes = bytes_of(&storage);
        let got = gathered::<i32>(&bytes, &[3, 2], &[1, 3]).unwrap();
        assert_eq!(got, vec![0, 10, 1, 11, 2, 12]);

        let mut out = filled(bytes.len(), 0);
        scatter(&got, &[3, 2], &[1, 3], &mut out).unwrap();
        assert_eq!(init(&out), init(&bytes));

        // Rank 4 with padding on two axes.
        let shape = [2, 2, 3, 2];
        let strides = [40, 16, 5, 2];
        let values: Vec<i8> = (0..24).collect();
        let mut buffer = filled(span(&shape, &strides).unwrap(), 0x7f);
        scatter(&values, &shape, &strides, &mut buffer).unwrap();
        assert_eq!(gathered::<i8>(&buffer, &shape, &strides).unwrap(), values);
        // Padding bytes are left untouched.
        assert_eq!(init(&buffer)[1], 0x7f);
    }

    #[test]
    fn scatter_checks_counts_and_sizes() {
        let mut buffer = filled(8, 0);
        assert!(scatter(&[1.0f32, 2.0, 3.0], &[3], &[1], &mut buffer).is_err());
        assert!(scatter(&[1.0f32, 2.0], &[3], &[1], &mut filled(12, 0)).is_err());
        scatter(&[1.5f64], &[1], &[1], &mut buffer).unwrap();
        assert_eq!(f64::from_ne_bytes(init(&buffer).try_into().unwrap()), 1.5);
        assert!(gathered::<f64>(&[], &[0, 4], &[4, 1]).unwrap().is_empty());
    }

    #[test]
    fn multi_array_data_type_raw_values() {
        use raw::*;
        assert_eq!(MULTI_ARRAY_FLOAT16, 0x10000 | 16);
        assert_eq!(MULTI_ARRAY_FLOAT32, 0x10000 | 32);
        assert_eq!(MULTI_ARRAY_FLOAT64, 0x10000 | 64);
        assert_eq!(MULTI_ARRAY_INT32, 0x20000 | 32);
        assert_eq!(MULTI_ARRAY_INT8, 0x20000 | 8);
        for data_type in [
            DataType::Float16,
            DataType::Float32,
            DataType::Float64,
            DataType::Int32,
            DataType::Int8,
        ] {
            assert_eq!(
                data_type_of_multi_array(multi_array_data_type(data_type)),
                Some(data_type)
            );
        }
        assert_eq!(multi_array_data_type(DataType::Float16), 65552);
        assert_eq!(multi_array_data_type(DataType::Int32), 131104);
        assert_eq!(data_type_of_multi_array(0x20000 | 16), None);
        assert_eq!(data_type_of_multi_array(0), None);
    }

    #[test]
    fn compute_unit_raw_values() {
        assert_eq!(raw::compute_units(ComputeUnits::CpuOnly), 0);
        assert_eq!(raw::compute_units(ComputeUnits::CpuAndGpu), 1);
        assert_eq!(raw::compute_units(ComputeUnits::All), 2);
        assert_eq!(raw::compute_units(ComputeUnits::CpuAndNeuralEngine), 3);
        assert_eq!(raw::compute_units(ComputeUnits::default()), 2);
    }

    #[test]
    fn pixel_format_codes_are_the_four_character_codes() {
        assert_eq!(raw::PIXEL_FORMAT_32BGRA, 0x4247_5241);
        assert_eq!(raw::PIXEL_FORMAT_ONE_COMPONENT_8, 0x4c30_3038);
        assert_eq!(raw::PIXEL_FORMAT_ONE_COMPONENT_16_HALF, 0x4c30_3068);
    }

    #[test]
    fn rgb_images_become_padded_bgra_and_back() {
        let image = Image::new(
            2,
            2,
            PixelFormat::Rgb8,
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        )
        .unwrap();
        let format = raw::pixel_format_for(image.format);
        let bytes_per_row = 12; // 8 bytes of pixels, 4 of padding
        let mut buffer = filled(bytes_per_row * 2, 0);
        write_pixels(&image, format, bytes_per_row, &mut buffer).unwrap();
        let bytes = init(&buffer);
        assert_eq!(&bytes[..8], &[3, 2, 1, 255, 6, 5, 4, 255]);
        assert_eq!(&bytes[8..12], &[0, 0, 0, 0]);
        assert_eq!(&bytes[12..20], &[9, 8, 7, 255, 12, 11, 10, 255]);
        let back = pixels_of(&buffer, format, 2, 2, bytes_per_row, PixelFormat::Rgb8).unwrap();
        assert_eq!(back, image);
        let bgr = pixels_of(&buffer, format, 2, 2, bytes_per_row, PixelFormat::Bgr8).unwrap();
        assert_eq!(&bgr.pixels[..3], &[3, 2, 1]);
        // Too small a buffer is refused, not indexed out of bounds.
        assert!(write_pixels(&image, format, bytes_per_row, &mut buffer[..19]).is_err());
        assert!(write_pixels(&image, format, 7, &mut buffer).is_err());
        assert!(pixels_of(&buffer, format, 2, 2, bytes_per_row, PixelFormat::Gray8).is_err());
    }

    #[test]
    fn gray_images_copy_rows() {
        let image = Image::new(3, 1, PixelFormat::Gray8, vec![7, 8, 9]).unwrap();
        let format = raw::pixel_format_for(image.format);
        assert_eq!(format, raw::PIXEL_FORMAT_ONE_COMPONENT_8);
        let mut buffer = filled(16, 0);
        write_pixels(&image, format, 16, &mut buffer).unwrap();
        assert_eq!(&init(&buffer)[..4], &[7, 8, 9, 0]);
        assert_eq!(
            pixels_of(&buffer, format, 3, 1, 16, PixelFormat::Gray8).unwrap(),
            image
        );
        assert_eq!(
            default_pixel_format(raw::PIXEL_FORMAT_32BGRA),
            Some(PixelFormat::Rgb8)
        );
        assert_eq!(
            default_pixel_format(raw::PIXEL_FORMAT_ONE_COMPONENT_16_HALF),
            Some(PixelFormat::GrayF16)
        );
        assert_eq!(default_pixel_format(0), None);
        let argb = bytes_of(&[0i8, 1, 2, 3]);
        let rgb = pixels_of(&argb, raw::PIXEL_FORMAT_32ARGB, 1, 1, 4, PixelFormat::Rgb8).unwrap();
        assert_eq!(rgb.pixels, vec![1, 2, 3]);
    }
}
