#!/usr/bin/env python3
"""zipf-trace.py: a request trace of viewers watching VOD streams whose popularity is Zipfian.

Used by bench/load/zipf-vs-nginx.sh; the same trace file drives both contenders.

Model
-----
* The catalogue has STREAMS streams of SEGMENTS segments each; stream i is the i-th most popular
  (rank i+1), paths are /vod/movies/s<i>/seg_<j>.ts (i, j from 0, no padding).
* A *session* is one viewer watching one stream: the stream is drawn Zipf(s) over the ranks
  (P(rank k) proportional to 1/k^s), the viewer starts at a uniformly random segment and then
  watches consecutive segments; the number it watches is geometric with mean MEAN_RUN, cut at
  the end of the stream (viewers stop there).
* VIEWERS sessions are active at once. Each request of the trace comes from one active session
  chosen uniformly at random; the session asks for its next segment, and when it has watched its
  run it is replaced by a new session. So the trace interleaves many sequential viewers, the way
  an edge sees them, and a segment just requested by one viewer is likely to be requested again
  soon by another viewer of the same (popular) stream.
* Deterministic for a given seed (Python's `random`, Mersenne Twister).

Output: REQUESTS lines, one path each. Statistics go to stderr, among them the hit ratio an
exact LRU cache of each --lru-capacity (objects, comma-separated) would reach on this trace, for
reference: a cold cache, every object the same size, requests one at a time.
"""

import argparse
import bisect
import collections
import itertools
import random
import sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--segments", type=int, default=50, help="segments per stream")
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent over streams")
    ap.add_argument("--viewers", type=int, default=64, help="concurrent sessions")
    ap.add_argument("--mean-run", type=float, default=10.0,
                    help="mean consecutive segments watched per session")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lru-capacity", default="",
                    help="also report the hit ratio of LRU caches of these many objects (a,b,...)")
    ap.add_argument("--out", required=True, help="trace file to write")
    a = ap.parse_args()
    caps = [int(c) for c in a.lru_capacity.split(",") if c.strip()]
    if min(a.streams, a.segments, a.requests, a.viewers) < 1 or a.mean_run < 1:
        ap.error("streams, segments, requests, viewers and mean-run must be >= 1")

    rng = random.Random(a.seed)
    cum = list(itertools.accumulate(1.0 / (k ** a.zipf_s) for k in range(1, a.streams + 1)))
    total = cum[-1]
    p_stop = 1.0 / a.mean_run  # geometric run length with mean MEAN_RUN

    def new_session():
        stream = bisect.bisect_left(cum, rng.random() * total)
        start = rng.randrange(a.segments)
        run = 1
        while rng.random() >= p_stop:
            run += 1
        return [stream, start, min(run, a.segments - start)]  # [stream, next segment, left]

    sessions = [new_session() for _ in range(a.viewers)]
    per_stream = collections.Counter()
    distinct = set()
    lrus = [collections.OrderedDict() for _ in caps]
    lru_hits = [0] * len(caps)
    with open(a.out, "w") as f:
        for _ in range(a.requests):
            k = rng.randrange(a.viewers)
            s = sessions[k]
            path = f"/vod/movies/s{s[0]}/seg_{s[1]}.ts"
            f.write(path + "\n")
            per_stream[s[0]] += 1
            distinct.add(path)
            for c, lru in enumerate(lrus):
                if path in lru:
                    lru_hits[c] += 1
                    lru.move_to_end(path)
                else:
                    lru[path] = None
                    if len(lru) > caps[c]:
                        lru.popitem(last=False)
            s[1] += 1
            s[2] -= 1
            if s[2] == 0:
                sessions[k] = new_session()

    top = per_stream.most_common(1)[0]
    print(f"zipf-trace: {a.requests} requests, {len(distinct)} distinct segments of "
          f"{a.streams * a.segments}, {len(per_stream)} streams requested; most popular "
          f"s{top[0]}: {top[1] / a.requests:.1%} of requests; compulsory-miss bound on the hit "
          f"ratio: {1 - len(distinct) / a.requests:.4f}", file=sys.stderr)
    for c, cap in enumerate(caps):
        print(f"zipf-trace: exact LRU of {cap} objects: hit ratio {lru_hits[c] / a.requests:.4f}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
