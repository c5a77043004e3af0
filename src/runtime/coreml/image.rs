//! Images to and from `CVPixelBuffer`, the form Core ML takes and returns
//! image features in. Pixel rows are converted by
//! [`crate::runtime::strides::write_pixels`] / `read_pixels`, tested on
//! every host.

use std::mem::MaybeUninit;
use std::ptr::{self, NonNull};

use objc2_core_foundation::{CFDictionary, CFRetained, CFString};
use objc2_core_video::{
    kCVPixelBufferIOSurfacePropertiesKey, kCVPixelFormatType_32BGRA,
    kCVPixelFormatType_OneComponent16Half, kCVPixelFormatType_OneComponent8, kCVReturnSuccess,
    CVPixelBuffer, CVPixelBufferCreate, CVPixelBufferGetBaseAddress, CVPixelBufferGetBytesPerRow,
    CVPixelBufferGetHeight, CVPixelBufferGetPixelFormatType, CVPixelBufferGetWidth,
    CVPixelBufferIsPlanar, CVPixelBufferLockBaseAddress, CVPixelBufferLockFlags,
    CVPixelBufferUnlockBaseAddress,
};

use super::super::strides;
use super::super::value::{Image, PixelFormat};

/// The Core Video pixel format of an image feature of `format` (named
/// constants; `strides::raw::pixel_format_for` holds the same table, tested
/// on every host).
fn core_video_format(format: PixelFormat) -> u32 {
    match format {
        PixelFormat::Rgb8 | PixelFormat::Bgr8 => kCVPixelFormatType_32BGRA,
        PixelFormat::Gray8 => kCVPixelFormatType_OneComponent8,
        PixelFormat::GrayF16 => kCVPixelFormatType_OneComponent16Half,
    }
}

/// A pixel buffer's base address, locked for CPU access; unlocked on drop.
struct Locked<'a> {
    buffer: &'a CVPixelBuffer,
    flags: CVPixelBufferLockFlags,
    base: NonNull<u8>,
    len: usize,
    bytes_per_row: usize,
}

impl<'a> Locked<'a> {
    /// Locks a non-planar `buffer` with `flags`.
    fn lock(buffer: &'a CVPixelBuffer, flags: CVPixelBufferLockFlags) -> Result<Self, String> {
        if CVPixelBufferIsPlanar(buffer) {
            return Err(
                "a planar pixel buffer, which this crate does not read or write".to_string(),
            );
        }
        // SAFETY: a valid pixel buffer; unlocked with the same flags on drop.
        let status = unsafe { CVPixelBufferLockBaseAddress(buffer, flags) };
        if status != kCVReturnSuccess {
            return Err(format!(
                "CVPixelBufferLockBaseAddress failed (CVReturn {status})"
            ));
        }
        // From here on, `drop` unlocks, whatever happens.
        let mut locked = Locked {
            buffer,
            flags,
            base: NonNull::dangling(),
            len: 0,
            bytes_per_row: CVPixelBufferGetBytesPerRow(buffer),
        };
        let Some(base) = NonNull::new(CVPixelBufferGetBaseAddress(buffer).cast::<u8>()) else {
            return Err("a locked pixel buffer without a base address".to_string());
        };
        locked.base = base;
        locked.len = locked
            .bytes_per_row
            .checked_mul(CVPixelBufferGetHeight(buffer))
            .filter(|&len| isize::try_from(len).is_ok())
            .ok_or("a pixel buffer too large to address")?;
        Ok(locked)
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: it was locked with these flags in `lock`.
        unsafe { CVPixelBufferUnlockBaseAddress(self.buffer, self.flags) };
    }
}

/// A new pixel buffer holding `image` (at least 1x1, pixels matching its
/// size: the caller checks).
pub(super) fn pixel_buffer(image: &Image) -> Result<CFRetained<CVPixelBuffer>, String> {
    if image.width == 0 || image.height == 0 {
        return Err("an empty image".to_string());
    }
    let format = core_video_format(image.format);
    // Backed by an IOSurface (an empty properties dictionary asks for the
    // defaults), as Apple's examples make them: Core ML can then hand the
    // buffer to the GPU or the Neural Engine without copying it.
    let no_properties = CFDictionary::<CFString, CFString>::empty();
    // SAFETY: reading an immutable extern constant string.
    let key = unsafe { kCVPixelBufferIOSurfacePropertiesKey };
    let attributes =
        CFDictionary::<CFString, CFDictionary>::from_slices(&[key], &[no_properties.as_ref()]);
    let mut created: *mut CVPixelBuffer = ptr::null_mut();
    // SAFETY: `created` is a valid place for the result; no allocator means
    // the default one; the attributes map a CFString key to the CFDictionary
    // value Core Video documents for it.
    let status = unsafe {
        CVPixelBufferCreate(
            None,
            image.width,
            image.height,
            format,
            Some(attributes.as_ref()),
            NonNull::from(&mut created),
        )
    };
    if status != kCVReturnSuccess {
        return Err(format!(
            "CVPixelBufferCreate of a {}x{} buffer failed (CVReturn {status})",
            image.width, image.height
        ));
    }
    let created = NonNull::new(created).ok_or("CVPixelBufferCreate returned no buffer")?;
    // SAFETY: CVPixelBufferCreate follows the Create rule: the reference it
    // returns is ours, and `CFRetained` releases it.
    let buffer = unsafe { CFRetained::from_raw(created) };
    {
        let locked = Locked::lock(&buffer, CVPixelBufferLockFlags::empty())?;
        // SAFETY: while locked, the base address points at `height` rows of
        // `bytes_per_row` bytes, writable, and nothing else holds this new
        // buffer. Its contents are uninitialised (Core Video does not clear
        // a new buffer), hence `MaybeUninit<u8>`, which needs no alignment;
        // `write_pixels` only writes.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(
                locked.base.as_ptr().cast::<MaybeUninit<u8>>(),
                locked.len,
            )
        };
        strides::write_pixels(image, format, locked.bytes_per_row, bytes)
            .map_err(|e| e.to_string())?;
    }
    Ok(buffer)
}

/// The pixels of `buffer` as an image of `format` (by default, as
/// [`strides::default_pixel_format`] reads the buffer's pixel format).
pub(super) fn read_image(
    buffer: &CVPixelBuffer,
    format: Option<PixelFormat>,
) -> Result<Image, String> {
    let pixel_format = CVPixelBufferGetPixelFormatType(buffer);
    let format = format
        .or_else(|| strides::default_pixel_format(pixel_format))
        .ok_or_else(|| {
            format!("a pixel buffer of format {pixel_format:#x}, which this crate does not read")
        })?;
    let (width, height) = (
        CVPixelBufferGetWidth(buffer),
        CVPixelBufferGetHeight(buffer),
    );
    let locked = Locked::lock(buffer, CVPixelBufferLockFlags::ReadOnly)?;
    // SAFETY: while locked, the base address points at `height` rows of
    // `bytes_per_row` bytes, readable; the row padding may never have been
    // written, hence `MaybeUninit<u8>` (no alignment needed).
    let bytes = unsafe {
        std::slice::from_raw_parts(
            locked.base.as_ptr().cast::<MaybeUninit<u8>>().cast_const(),
            locked.len,
        )
    };
    // SAFETY: the pixels of an image buffer Core ML returned as an output
    // are what it computed, every row's `width` pixels written; only those
    // are read.
    unsafe {
        strides::read_pixels(
            bytes,
            pixel_format,
            width,
            height,
            locked.bytes_per_row,
            format,
        )
    }
    .map_err(|e| e.to_string())
}
