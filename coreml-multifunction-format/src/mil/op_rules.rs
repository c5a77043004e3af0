//! Parameter rules of `einsum`, `space_to_batch` / `batch_to_space`,
//! `flatten2d`, `reshape_like` and `sliding_windows` that the interpreter and shape
//! inference share, so that both accept the same programs and a result has
//! the shape its type rule promised. They follow coremltools 9.0's op
//! definitions (`iOS15/linear.py`, `iOS15/tensor_transformation.py`,
//! `iOS15/tensor_operation.py`).

/// The rank of the operands of `einsum` with `equation`, which must be one
/// of the two contractions coremltools' `einsum` defines: `nchw,nwhu->nchu`
/// (rank 4) or `chw,whu->chu` (rank 3), under any letters. coremltools
/// parses an equation by numbering its letters in order of appearance
/// (`parse_einsum_equation`), so "bcij,bjik->bcik" is the rank-4 form too.
pub fn einsum_rank(equation: &str) -> Result<usize, String> {
    let unsupported = || {
        format!(
            "einsum equation {equation:?} is not one coremltools' einsum op supports \
             (nchw,nwhu->nchu or chw,whu->chu, under any letters)"
        )
    };
    let (inputs, output) = equation.split_once("->").ok_or_else(unsupported)?;
    if output.contains("->") {
        return Err(unsupported());
    }
    let mut terms: Vec<&str> = inputs.split(',').collect();
    terms.push(output);
    let mut letters: Vec<char> = Vec::new();
    let vectors: Vec<Vec<usize>> = terms
        .iter()
        .map(|term| {
            term.chars()
                .map(|c| match letters.iter().position(|&l| l == c) {
                    Some(k) => k,
                    None => {
                        letters.push(c);
                        letters.len() - 1
                    }
                })
                .collect()
        })
        .collect();
    let rank4: [&[usize]; 3] = [&[0, 1, 2, 3], &[0, 3, 2, 4], &[0, 1, 2, 4]];
    let rank3: [&[usize]; 3] = [&[0, 1, 2], &[2, 1, 3], &[0, 1, 3]];
    let matches = |form: [&[usize]; 3]| {
        vectors.len() == 3 && vectors.iter().zip(form).all(|(v, f)| v.as_slice() == f)
    };
    if matches(rank4) {
        Ok(4)
    } else if matches(rank3) {
        Ok(3)
    } else {
        Err(unsupported())
    }
}

/// `space_to_batch`'s and `batch_to_space`'s `block_shape` (two positive
/// factors) and `paddings` / `crops` (`[2, 2]`, non-negative: before and
/// after, per spatial axis), checked.
pub fn block_params(
    block_shape: &[i64],
    amounts: &[i64],
    amounts_name: &str,
) -> Result<([usize; 2], [[usize; 2]; 2]), String> {
    let block: [i64; 2] = block_shape.try_into().map_err(|_| {
        format!("block_shape {block_shape:?} does not have two entries (height and width)")
    })?;
    if block.iter().any(|&b| b < 1) {
        return Err(format!("block_shape {block_shape:?} is not positive"));
    }
    let amounts: [i64; 4] = amounts.try_into().map_err(|_| {
        format!("{amounts_name} {amounts:?} is not [2, 2] (before and after, per spatial axis)")
    })?;
    if amounts.iter().any(|&a| a < 0) {
        return Err(format!("{amounts_name} {amounts:?} has a negative entry"));
    }
    let u = |v: i64| v as usize;
    Ok((
        [u(block[0]), u(block[1])],
        [
            [u(amounts[0]), u(amounts[1])],
            [u(amounts[2]), u(amounts[3])],
        ],
    ))
}

/// Where `flatten2d` splits a tensor of rank `rank` for its `axis`: the
/// result is `[prod(shape[..split]), prod(shape[split..])]`. Like Python's
/// slicing, which coremltools' definition uses, a negative axis counts from
/// the end; an axis outside `-rank..=rank` is refused.
pub fn flatten2d_split(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    if axis < -r || axis > r {
        return Err(format!(
            "axis {axis} is out of range for flatten2d of a tensor of rank {rank}"
        ));
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

/// The number of windows `sliding_windows` takes from an axis of `length`
/// elements: `(length - size) / stride + 1`, with `size` and `stride`
/// positive and at most `length` for the size.
pub fn window_count(length: u64, size: i64, stride: i64) -> Result<u64, String> {
    if size < 1 || stride < 1 {
        return Err(format!(
            "sliding_windows size {size} and stride {stride} must be positive"
        ));
    }
    let size = size as u64;
    if size > length {
        return Err(format!(
            "sliding_windows size {size} is larger than the axis ({length} elements)"
        ));
    }
    Ok((length - size) / stride as u64 + 1)
}

/// `dims[begin:end]`, Python's slice, as `reshape_like` takes its
/// reference shapes (negative indices count from the end,
/// out-of-range ones clamp, an empty range is empty).
pub fn python_slice<T>(dims: &[T], begin: i64, end: i64) -> &[T] {
    let n = dims.len() as i64;
    let clamp = |i: i64| (if i < 0 { i + n } else { i }).clamp(0, n) as usize;
    let (b, e) = (clamp(begin), clamp(end));
    if b >= e {
        &[]
    } else {
        &dims[b..e]
    }
}
