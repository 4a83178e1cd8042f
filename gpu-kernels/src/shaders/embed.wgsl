// embed v1: C = A × Bᵀ for int8 A (n×k) and int8 B given as its transpose (m×k), i32 sums.
//
// Rows of A and of Bᵀ are packed four int8 to a u32 (little-endian byte order, two's
// complement), each row padded with zeros to k4 = ceil(k / 4) words. Zero padding adds
// nothing to a dot product, so sizes need not be multiples of anything.
//
// Each 16×16 workgroup computes a 16×16 tile of C, stepping through k in slices of 16 words
// (64 int8) staged in workgroup memory. Sums wrap on i32 overflow (WGSL integer arithmetic
// wraps), exactly like the CPU reference's wrapping arithmetic.

struct Params {
    n: u32,
    k4: u32,
    m: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read> bt: array<u32>;
@group(0) @binding(3) var<storage, read_write> c: array<i32>;

const TILE: u32 = 16u;

var<workgroup> tile_a: array<array<u32, 16>, 16>;
var<workgroup> tile_b: array<array<u32, 16>, 16>;

// Sum of the products of the four signed bytes of x and y.
fn dot4(x: u32, y: u32) -> i32 {
    let xi = bitcast<i32>(x);
    let yi = bitcast<i32>(y);
    var sum = 0i;
    for (var byte = 0u; byte < 4u; byte++) {
        // extractBits on i32 sign-extends the field.
        sum += extractBits(xi, byte * 8u, 8u) * extractBits(yi, byte * 8u, 8u);
    }
    return sum;
}

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    let row = group.y * TILE + local.y;
    let col = group.x * TILE + local.x;
    let b_row = group.x * TILE + local.y;
    var acc = 0i;
    let slices = (params.k4 + TILE - 1u) / TILE;
    for (var slice = 0u; slice < slices; slice++) {
        let word = slice * TILE + local.x;
        var from_a = 0u;
        if (row < params.n && word < params.k4) {
            from_a = a[row * params.k4 + word];
        }
        tile_a[local.y][local.x] = from_a;
        var from_b = 0u;
        if (b_row < params.m && word < params.k4) {
            from_b = bt[b_row * params.k4 + word];
        }
        tile_b[local.y][local.x] = from_b;
        workgroupBarrier();
        for (var t = 0u; t < TILE; t++) {
            acc += dot4(tile_a[local.y][t], tile_b[local.x][t]);
        }
        workgroupBarrier();
    }
    if (row < params.n && col < params.m) {
        c[row * params.m + col] = acc;
    }
}
