// rerank v1, second pass: the k best corpus entries of each query, from the i32 scores of
// the first pass (queries × corpus, row-major). Order: score descending, then corpus index
// ascending. One invocation per query keeps a sorted list of at most 64 in private memory.
// Output per query: k pairs (index, score as u32 bits).

struct Params {
    queries: u32,
    corpus: u32,
    k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> scores: array<i32>;
@group(0) @binding(2) var<storage, read_write> best: array<u32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let q = id.x;
    if (q >= params.queries) {
        return;
    }
    var best_score: array<i32, 64>;
    var best_index: array<u32, 64>;
    var count = 0u;
    for (var j = 0u; j < params.corpus; j++) {
        let s = scores[q * params.corpus + j];
        // Full: only a strictly higher score gets in (an equal one has a higher index).
        if (count == params.k && s <= best_score[count - 1u]) {
            continue;
        }
        var pos = min(count, params.k - 1u);
        if (count < params.k) {
            count += 1u;
        }
        // Entries with a lower score move down; equal scores keep their place (lower index).
        while (pos > 0u && best_score[pos - 1u] < s) {
            best_score[pos] = best_score[pos - 1u];
            best_index[pos] = best_index[pos - 1u];
            pos -= 1u;
        }
        best_score[pos] = s;
        best_index[pos] = j;
    }
    for (var slot = 0u; slot < count; slot++) {
        let at = (q * params.k + slot) * 2u;
        best[at] = best_index[slot];
        best[at + 1u] = bitcast<u32>(best_score[slot]);
    }
}
