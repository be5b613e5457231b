"""XLM-V vocabulary construction (Liang et al. 2023) and the XLM-R joint baseline.

1. A sentencepiece unigram model per language (`per_language_size` pieces), trained in parallel.
2. Each language becomes a lexical vector over the union of those vocabularies: a piece's entry is
   its log-probability in the language's model shifted to be positive (log p - floor, floor
   being the lowest log-probability of any model, minus one) and 0 when the piece is not in the
   language's vocabulary; rows are L2-normalised. This is Chung et al.'s (2020) binary vector
   weighted by unigram log-probabilities, as XLM-V does, oriented so that frequent shared
   pieces count most.
3. k-means (scikit-learn, k-means++ seeding) groups the languages into `clusters`: the lowest
   inertia of `restarts` seeded runs, reported with the clusters.
4. Capacity per cluster from ALP: one unigram model per cluster (its languages' text mixed with
   alpha = 0.3 smoothing), cut to a grid of sizes (herd/vocab/unigram.py: unigram vocabularies
   nest by score) to read ALP against size, averaged over the cluster's languages. Capacity is
   then given greedily, step by step, to the cluster whose next step raises the summed ALP of its
   languages most per added piece (Zheng et al. 2021's allocation, with every language weighing
   the same, so large languages do not take the budget); the last step is taken in part, so the
   capacities add up to the budget exactly.
5. Each cluster's vocabulary is a unigram model trained on the cluster's mix at the capacity
   given to it (XLM-V section 3: per-cluster sentencepiece models at the allocated sizes); the
   cuts of step 4 only estimate the curves. A cut keeps the pieces that are most probable in a
   model of another size, and those are not the pieces a model of the cut's size learns: on real
   UI text (docs/vocabularies.md) unions of cuts trailed the joint baseline by 2.1-3.8 held-out
   ALP per language at 4,000-16,000 pieces, unions of trained models by 0.1-1.2.
6. The final vocabulary is the union of the clusters' models (shared pieces once, with their
   best score), written as one sentencepiece model that herd.load_tokenizer and
   `herd data prepare` read. Shared pieces make a union smaller than the sum of its parts, so the
   budget is raised until the union reaches `size`; an overshoot drops the pieces that the
   languages use least (each language's share of tokens, summed), never by comparing scores of
   different models.

The baseline is one unigram model on the concatenated corpus with exponentially smoothed language
sampling (q_l proportional to p_l^0.3, XLM-R / Conneau et al. 2020) at the same size.
"""

from __future__ import annotations

import math
import os
import random
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tqdm import tqdm

from herd.errors import HerdError
from herd.vocab import unigram
from herd.vocab.corpus import Language, alp

ALPHA = 0.3
ALP_SAMPLE = 2000  # sentences per language for the ALP curves
KMEANS_RESTARTS = 256  # k-means++ runs; the lowest inertia wins


def smoothed_sample(languages: list[Language], alpha: float, seed: int, total: int | None = None):
    """Sentences drawn so language l makes up q_l = p_l^alpha / sum p^alpha of them (p_l = its
    share of sentences); `total` defaults to the number of sentences there are."""
    sizes = np.array([len(lang.train) for lang in languages], dtype=np.float64)
    q = (sizes / sizes.sum()) ** alpha
    q /= q.sum()
    total = int(total or sizes.sum())
    rng = random.Random(seed)
    out: list[str] = []
    for lang, share in zip(languages, q, strict=True):
        n = max(1, round(share * total))
        if n <= len(lang.train):
            out.extend(rng.sample(lang.train, n))
        else:  # upsampled: every sentence, then repeats
            out.extend(
                lang.train * (n // len(lang.train)) + rng.sample(lang.train, n % len(lang.train))
            )
    rng.shuffle(out)
    return out


def _train_serialized(args) -> bytes:
    sentences, size = args
    return unigram.train_unigram(sentences, size).SerializeToString()


def train_many(jobs: list[tuple[list[str], int]], workers: int, desc: str, progress: bool):
    """Train unigram models in parallel processes; returns ModelProtos in job order."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    out: list = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=desc, unit="model", disable=None if progress else True)
    if workers <= 1 or len(jobs) == 1:
        for i, job in enumerate(jobs):
            out[i] = _train_serialized(job)
            bar.update(1)
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(_train_serialized, job): i for i, job in enumerate(jobs)}
            from concurrent.futures import as_completed

            for f in as_completed(futures):
                out[futures[f]] = f.result()
                bar.update(1)
    bar.close()
    protos = []
    for data in out:
        proto = pb.ModelProto()
        proto.ParseFromString(data)
        protos.append(proto)
    return protos


def lexical_vectors(models: list) -> tuple[np.ndarray, list[str]]:
    """[languages, union pieces] log-probability-weighted, L2-normalised rows."""
    per_lang = [dict(unigram.learned_pieces(m)) for m in models]
    union = sorted({p for d in per_lang for p in d})
    index = {p: i for i, p in enumerate(union)}
    floor = min(min(d.values()) for d in per_lang) - 1.0
    vectors = np.zeros((len(models), len(union)), dtype=np.float64)
    for row, d in enumerate(per_lang):
        for piece, score in d.items():
            vectors[row, index[piece]] = score - floor
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, union


def cluster_languages(
    vectors: np.ndarray, k: int, seed: int = 0, restarts: int = KMEANS_RESTARTS
) -> tuple[np.ndarray, float]:
    """k-means++ labels and their inertia (the summed squared distance of each language to its
    cluster's centre, which k-means minimises): the best of `restarts` seeded runs.

    Lloyd's iterations stop at a local optimum, and languages' fingerprints have many: on real UI
    strings in 18 languages (docs/vocabularies.md) ten restarts returned seven different
    partitions over ten seeds, most of them worse than the best one. Restarts are cheap because
    k-means runs on each language's coordinates in the span of the vectors (n languages -> n
    dimensions, distances unchanged) instead of the union of every per-language vocabulary.
    Cluster numbers follow the languages' order (the first language is in cluster 0)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    u, s, _ = np.linalg.svd(vectors, full_matrices=False)
    with threadpool_limits(1):  # a few dozen points: starting OpenMP threads per run costs more
        fit = KMeans(n_clusters=k, init="k-means++", n_init=restarts, random_state=seed)
        fit.fit(u * s)
    order = {label: i for i, label in enumerate(dict.fromkeys(fit.labels_.tolist()))}
    return np.array([order[label] for label in fit.labels_.tolist()]), float(fit.inertia_)


def alp_curve(model, languages: list[Language], grid: list[int]) -> list[float]:
    """Mean ALP over `languages` of the model cut to each size of `grid`."""
    samples = [lang.train[:ALP_SAMPLE] for lang in languages]
    curve = []
    for size in grid:
        sp = unigram.processor(unigram.prune(model, size))
        curve.append(float(np.mean([alp(sp.encode(s, out_type=str)) for s in samples])))
    return curve


def size_grid(lo: int, hi: int, steps: int = 12) -> list[int]:
    """Geometric grid of sizes from lo to hi (both included)."""
    if hi <= lo:
        return [hi]
    ratio = (hi / lo) ** (1 / (steps - 1))
    return sorted({round(lo * ratio**i) for i in range(steps)} | {hi})


def allocate(curves: list[tuple[list[int], list[float]]], weights: list[int], budget: int):
    """Greedy capacity per cluster: start each at its smallest grid size, then repeatedly advance
    the cluster whose next grid step gains the most weighted ALP per added piece. A step larger
    than the budget left is taken in part (the curve is linear between grid points), so the
    capacities add up to the budget unless every curve is exhausted: the grid is geometric, and
    whole steps at the top are a tenth of the size or more."""
    position = [0] * len(curves)
    total = sum(grid[0] for grid, _ in curves)
    extra = [0] * len(curves)
    while total < budget:
        best, gain = None, -math.inf
        for c, (grid, curve) in enumerate(curves):
            i = position[c]
            if i + 1 < len(grid):
                g = weights[c] * (curve[i + 1] - curve[i]) / (grid[i + 1] - grid[i])
                if g > gain:
                    best, gain = c, g
        if best is None:
            break
        grid = curves[best][0]
        step = grid[position[best] + 1] - grid[position[best]]
        if total + step > budget:
            extra[best] = budget - total
            break
        total += step
        position[best] += 1
    return [grid[i] + e for (grid, _), i, e in zip(curves, position, extra, strict=True)]


def union_of(models: list) -> object:
    """One model holding every learned piece of `models` (specials, byte pieces and normalizer
    of the first)."""
    pieces = [pair for model in models for pair in unigram.learned_pieces(model)]
    return unigram.with_pieces(models[0], pieces)


def trim_least_used(model, size: int, languages: list[Language]):
    """`model` cut to `size` learned pieces by dropping the multi-character pieces the languages
    use least: each piece's share of a language's tokens (on up to ALP_SAMPLE of its sentences),
    summed over languages, so every language weighs the same; ties go to the lower score."""
    extra = unigram.learned_size(model) - size
    if extra <= 0:
        return model
    sp = unigram.processor(model)
    share: dict[str, float] = {}
    for lang in languages:
        tokens = [p for s in sp.encode(lang.train[:ALP_SAMPLE], out_type=str) for p in s]
        for piece in tokens:
            share[piece] = share.get(piece, 0.0) + 1.0 / len(tokens)
    ranked = unigram.learned_pieces(model)
    multi = sorted((x for x in ranked if len(x[0]) > 1), key=lambda x: (share.get(x[0], 0.0), x[1]))
    drop = {piece for piece, _ in multi[:extra]}
    return unigram.with_pieces(model, [x for x in ranked if x[0] not in drop])


def build(
    corpus: dict[str, Language],
    size: int,
    clusters: int,
    per_language_size: int = 8000,
    workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
    restarts: int = KMEANS_RESTARTS,
) -> dict:
    """The XLM-V vocabulary: {'model', 'labels', 'inertia', 'vectors', 'capacities', ...}."""
    codes = list(corpus)
    if clusters < 1 or clusters > len(codes):
        raise HerdError(
            f"--clusters {clusters}: expected 1..{len(codes)} (one per language at most)"
        )
    workers = workers or os.cpu_count() or 1
    languages = [corpus[c] for c in codes]
    lang_models = train_many(
        [(lang.train, per_language_size) for lang in languages], workers, "per-language", progress
    )
    vectors, union = lexical_vectors(lang_models)
    labels, inertia = cluster_languages(vectors, clusters, seed, restarts)
    members = [[languages[i] for i in np.flatnonzero(labels == c)] for c in range(clusters)]
    mixes = [smoothed_sample(m, ALPHA, seed) for m in members]
    cluster_models = train_many([(mix, size) for mix in mixes], workers, "per-cluster", progress)
    # these full-size models give the ALP curves (cut to a grid of sizes, step 4)
    curves = []
    for model, langs in zip(cluster_models, members, strict=True):
        chars = sum(1 for p, _ in unigram.learned_pieces(model) if len(p) == 1)
        grid = size_grid(max(chars, 1), max(unigram.learned_size(model), chars + 1))
        curves.append((grid, alp_curve(model, langs, grid)))
    weights = [len(m) for m in members]
    # `size` counts every piece, as a model's vocabulary size does: the specials and the 256
    # byte-fallback pieces come first, the learned pieces share the rest.
    template = cluster_models[0]
    reserved = len(template.pieces) - unigram.learned_size(template)
    if size <= reserved + 1:
        raise HerdError(f"--size {size}: must exceed the {reserved} special and byte pieces")
    size -= reserved
    largest = [grid[-1] for grid, _ in curves]
    # The budget whose cuts' union fills `size` (cheap: no training) is the first guess for the
    # trained models' union, which overlaps about as much.
    budget = size
    for _ in range(8):
        capacities = allocate(curves, weights, budget)
        cuts = [unigram.prune(m, c) for m, c in zip(cluster_models, capacities, strict=True)]
        short = size - unigram.learned_size(union_of(cuts))
        if short <= 0 or capacities == largest:
            break
        budget += short
    trained: dict[tuple[int, int], object] = {
        (c, largest[c]): model for c, model in enumerate(cluster_models)
    }
    for _ in range(4):  # train each cluster at its capacity; top the budget up if still short
        jobs = [(c, cap) for c, cap in enumerate(capacities) if (c, cap) not in trained]
        models = train_many(
            [(mixes[c], cap + reserved) for c, cap in jobs], workers, "per-cluster", progress
        )
        trained.update(zip(jobs, models, strict=True))
        final = union_of([trained[(c, cap)] for c, cap in enumerate(capacities)])
        short = size - unigram.learned_size(final)
        if short <= 0 or capacities == largest:
            break
        budget += short
        capacities = allocate(curves, weights, budget)
    final = trim_least_used(final, size, languages)
    return {
        "model": final,
        "codes": codes,
        "labels": labels.tolist(),
        "inertia": inertia,
        "restarts": restarts,
        "vectors": vectors,
        "capacities": capacities,
        "curves": curves,
        "union_per_language": len(union),
        "reached": len(final.pieces),
    }


def build_joint(corpus: dict[str, Language], size: int, seed: int = 0, threads: int | None = None):
    """XLM-R's baseline: one unigram model on an alpha = 0.3 smoothed mix of all languages."""
    mix = smoothed_sample(list(corpus.values()), ALPHA, seed)
    return unigram.train_unigram(mix, size, threads=threads or os.cpu_count() or 1)
