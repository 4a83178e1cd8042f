// blake3 v1: the BLAKE3 hash (default mode: no key, no derive_key, 32-byte output) of many
// messages in one dispatch, one invocation per message.
//
// Bindings:
//   0  params  uniform: count = number of messages (the other three words are padding).
//   1  data    every message's bytes, little-endian 4 bytes per word; each message starts at a
//              word boundary and its last word is zero-padded.
//   2  spans   per message i: spans[2i] = its first word in `data`, spans[2i+1] = its length in
//              bytes (at most 65536: 64 chunks of 1024 bytes).
//   3  digests per message i: words 8i..8i+8 = the 32-byte digest as little-endian words.
//
// The algorithm is the BLAKE3 specification's: a message is split into 1024-byte chunks (one
// empty chunk for the empty message), each chunk into 64-byte blocks compressed in a chain
// from the IV with the chunk's index as the counter, CHUNK_START on its first block, CHUNK_END
// on its last, whose block length is the bytes it really holds. Chunk chaining values are
// merged into the binary tree with a stack: after chunk c (not the last) the stack is merged
// once per trailing zero bit of c + 1 (PARENT nodes, counter 0, block length 64). The last
// chunk's value is then folded with the stack from the top; the very last compression (the
// last chunk's last block when there is only one chunk, else the parent of the stack's bottom
// entry) carries ROOT.
// All arithmetic is u32, additions wrap, rotations are shifts.

struct Params {
    count: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> data: array<u32>;
@group(0) @binding(2) var<storage, read> spans: array<u32>;
@group(0) @binding(3) var<storage, read_write> digests: array<u32>;

const CHUNK_START: u32 = 1u;
const CHUNK_END: u32 = 2u;
const PARENT: u32 = 4u;
const ROOT: u32 = 8u;

const CHUNK_LEN: u32 = 1024u;
const BLOCK_LEN: u32 = 64u;

const IV_LO: vec4<u32> = vec4<u32>(0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au);
const IV_HI: vec4<u32> = vec4<u32>(0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u);

// A chaining value: 8 words.
struct Cv {
    lo: vec4<u32>,
    hi: vec4<u32>,
}

// The 16-word state as four rows: a = v0..v3, b = v4..v7, c = v8..v11, d = v12..v15.
struct Rows {
    a: vec4<u32>,
    b: vec4<u32>,
    c: vec4<u32>,
    d: vec4<u32>,
}

fn rotr(x: vec4<u32>, n: u32) -> vec4<u32> {
    return (x >> vec4<u32>(n)) | (x << vec4<u32>(32u - n));
}

// The G function on four columns at once (lane j of each row is one G's a, b, c, d).
fn g(r: Rows, mx: vec4<u32>, my: vec4<u32>) -> Rows {
    var a = r.a;
    var b = r.b;
    var c = r.c;
    var d = r.d;
    a = a + b + mx;
    d = rotr(d ^ a, 16u);
    c = c + d;
    b = rotr(b ^ c, 12u);
    a = a + b + my;
    d = rotr(d ^ a, 8u);
    c = c + d;
    b = rotr(b ^ c, 7u);
    return Rows(a, b, c, d);
}

// One round: G on the columns, then on the diagonals (rows rotated so that each diagonal
// lies in one lane, then rotated back).
fn mix_round(r: Rows, cx: vec4<u32>, cy: vec4<u32>, dx: vec4<u32>, dy: vec4<u32>) -> Rows {
    var s = g(r, cx, cy);
    s = g(Rows(s.a, s.b.yzwx, s.c.zwxy, s.d.wxyz), dx, dy);
    return Rows(s.a, s.b.wxyz, s.c.zwxy, s.d.yzwx);
}

// The compression function, truncated to the 8 words a chaining value (or a 32-byte root
// output) needs. `m` is the block as 16 words; the message permutation is applied by reading
// each round's words in its permuted order.
fn compress(cv: Cv, m: array<vec4<u32>, 4>, counter: u32, block_len: u32, flags: u32) -> Cv {
    var r = Rows(cv.lo, cv.hi, IV_LO, vec4<u32>(counter, 0u, block_len, flags));
    // Round 0: message words 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15.
    r = mix_round(r,
        vec4<u32>(m[0].x, m[0].z, m[1].x, m[1].z), vec4<u32>(m[0].y, m[0].w, m[1].y, m[1].w),
        vec4<u32>(m[2].x, m[2].z, m[3].x, m[3].z), vec4<u32>(m[2].y, m[2].w, m[3].y, m[3].w));
    // Round 1: message words 2 6 3 10 7 0 4 13 1 11 12 5 9 14 15 8.
    r = mix_round(r,
        vec4<u32>(m[0].z, m[0].w, m[1].w, m[1].x), vec4<u32>(m[1].z, m[2].z, m[0].x, m[3].y),
        vec4<u32>(m[0].y, m[3].x, m[2].y, m[3].w), vec4<u32>(m[2].w, m[1].y, m[3].z, m[2].x));
    // Round 2: message words 3 4 10 12 13 2 7 14 6 5 9 0 11 15 8 1.
    r = mix_round(r,
        vec4<u32>(m[0].w, m[2].z, m[3].y, m[1].w), vec4<u32>(m[1].x, m[3].x, m[0].z, m[3].z),
        vec4<u32>(m[1].z, m[2].y, m[2].w, m[2].x), vec4<u32>(m[1].y, m[0].x, m[3].w, m[0].y));
    // Round 3: message words 10 7 12 9 14 3 13 15 4 0 11 2 5 8 1 6.
    r = mix_round(r,
        vec4<u32>(m[2].z, m[3].x, m[3].z, m[3].y), vec4<u32>(m[1].w, m[2].y, m[0].w, m[3].w),
        vec4<u32>(m[1].x, m[2].w, m[1].y, m[0].y), vec4<u32>(m[0].x, m[0].z, m[2].x, m[1].z));
    // Round 4: message words 12 13 9 11 15 10 14 8 7 2 5 3 0 1 6 4.
    r = mix_round(r,
        vec4<u32>(m[3].x, m[2].y, m[3].w, m[3].z), vec4<u32>(m[3].y, m[2].w, m[2].z, m[2].x),
        vec4<u32>(m[1].w, m[1].y, m[0].x, m[1].z), vec4<u32>(m[0].z, m[0].w, m[0].y, m[1].x));
    // Round 5: message words 9 14 11 5 8 12 15 1 13 3 0 10 2 6 4 7.
    r = mix_round(r,
        vec4<u32>(m[2].y, m[2].w, m[2].x, m[3].w), vec4<u32>(m[3].z, m[1].y, m[3].x, m[0].y),
        vec4<u32>(m[3].y, m[0].x, m[0].z, m[1].x), vec4<u32>(m[0].w, m[2].z, m[1].z, m[1].w));
    // Round 6: message words 11 15 5 0 1 9 8 6 14 10 2 12 3 4 7 13.
    r = mix_round(r,
        vec4<u32>(m[2].w, m[1].y, m[0].y, m[2].x), vec4<u32>(m[3].w, m[0].x, m[2].y, m[1].z),
        vec4<u32>(m[3].z, m[0].z, m[0].w, m[1].w), vec4<u32>(m[2].z, m[3].x, m[1].x, m[3].y));
    return Cv(r.a ^ r.c, r.b ^ r.d);
}

// The 16 words of the block starting at byte `start` of the message at word `offset` of
// `len_bytes` bytes: bytes past the end read as zero.
fn load_block(offset: u32, len_bytes: u32, start: u32) -> array<vec4<u32>, 4> {
    var m: array<vec4<u32>, 4>;
    for (var i = 0u; i < 16u; i = i + 1u) {
        let at = start + 4u * i;
        var word = 0u;
        if (at < len_bytes) {
            word = data[offset + at / 4u];
            let left = len_bytes - at;
            if (left < 4u) {
                word = word & ((1u << (8u * left)) - 1u);
            }
        }
        m[i / 4u][i % 4u] = word;
    }
    return m;
}

fn parent_block(left: Cv, right: Cv) -> array<vec4<u32>, 4> {
    return array<vec4<u32>, 4>(left.lo, left.hi, right.lo, right.hi);
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let index = id.x;
    if (index >= params.count) {
        return;
    }
    let offset = spans[2u * index];
    let len_bytes = spans[2u * index + 1u];
    let chunks = max((len_bytes + CHUNK_LEN - 1u) / CHUNK_LEN, 1u);
    let iv = Cv(IV_LO, IV_HI);

    // The stack of subtree chaining values: at most 6 deep for 64 chunks.
    var stack: array<Cv, 8>;
    var depth = 0u;

    // Every chunk but the last is full: 16 blocks of 64 bytes.
    for (var chunk = 0u; chunk + 1u < chunks; chunk = chunk + 1u) {
        var cv = iv;
        for (var block = 0u; block < 16u; block = block + 1u) {
            var flags = 0u;
            if (block == 0u) {
                flags = flags | CHUNK_START;
            }
            if (block == 15u) {
                flags = flags | CHUNK_END;
            }
            let m = load_block(offset, len_bytes, chunk * CHUNK_LEN + block * BLOCK_LEN);
            cv = compress(cv, m, chunk, BLOCK_LEN, flags);
        }
        // Merge one completed subtree per trailing zero bit of the chunks so far.
        var total = chunk + 1u;
        while ((total & 1u) == 0u) {
            depth = depth - 1u;
            cv = compress(iv, parent_block(stack[depth], cv), 0u, BLOCK_LEN, PARENT);
            total = total >> 1u;
        }
        stack[depth] = cv;
        depth = depth + 1u;
    }

    // The last chunk: 1..=1024 bytes, or 0 for the empty message.
    let last = chunks - 1u;
    let chunk_start = last * CHUNK_LEN;
    let chunk_len = len_bytes - chunk_start;
    let blocks = max((chunk_len + BLOCK_LEN - 1u) / BLOCK_LEN, 1u);
    var cv = iv;
    for (var block = 0u; block < blocks; block = block + 1u) {
        var flags = 0u;
        if (block == 0u) {
            flags = flags | CHUNK_START;
        }
        var block_len = BLOCK_LEN;
        if (block + 1u == blocks) {
            flags = flags | CHUNK_END;
            block_len = chunk_len - block * BLOCK_LEN;
            if (depth == 0u) {
                flags = flags | ROOT;
            }
        }
        let m = load_block(offset, len_bytes, chunk_start + block * BLOCK_LEN);
        cv = compress(cv, m, last, block_len, flags);
    }

    // Fold the stack from its top; the bottom parent is the root.
    while (depth > 0u) {
        depth = depth - 1u;
        var flags = PARENT;
        if (depth == 0u) {
            flags = flags | ROOT;
        }
        cv = compress(iv, parent_block(stack[depth], cv), 0u, BLOCK_LEN, flags);
    }

    let base = 8u * index;
    for (var i = 0u; i < 4u; i = i + 1u) {
        digests[base + i] = cv.lo[i];
        digests[base + 4u + i] = cv.hi[i];
    }
}
