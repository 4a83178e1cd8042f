// simulate v1: one step of fixed-point diffusion on an H×W grid of i32, row-major.
//
//   lap  = up + down + left + right - 4 * c
//   next = c + ((lap * alpha) >> shift)
//
// `>>` is the arithmetic shift of i32 (rounds toward negative infinity). A neighbour outside
// the grid takes the value of the cell itself (no flux through the border). Every operation
// wraps on i32 overflow. T steps are T dispatches, ping-ponging between two buffers.

struct Params {
    h: u32,
    w: u32,
    alpha: i32,
    shift: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<i32>;
@group(0) @binding(2) var<storage, read_write> dst: array<i32>;

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let x = id.x;
    let y = id.y;
    if (x >= params.w || y >= params.h) {
        return;
    }
    let i = y * params.w + x;
    let c = src[i];
    var up = c;
    if (y > 0u) {
        up = src[i - params.w];
    }
    var down = c;
    if (y + 1u < params.h) {
        down = src[i + params.w];
    }
    var left = c;
    if (x > 0u) {
        left = src[i - 1u];
    }
    var right = c;
    if (x + 1u < params.w) {
        right = src[i + 1u];
    }
    let lap = up + down + left + right - 4i * c;
    dst[i] = c + ((lap * params.alpha) >> params.shift);
}
