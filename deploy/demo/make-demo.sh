#!/usr/bin/env bash
# Regenerates the committed demo stream: 8 s of test pattern and tone, two renditions
# (640x360 @ 400 kb/s, 320x180 @ 150 kb/s), 2 s HLS segments, about 0.6 MB in all.
# Usage: deploy/demo/make-demo.sh   (needs ffmpeg)
set -euo pipefail
out="$(cd "$(dirname "$0")" && pwd)/origin/vod/movies/demo"
rm -rf "$out" && mkdir -p "$out"
cd "$out"
ffmpeg -hide_banner -loglevel error \
  -f lavfi -i testsrc=size=640x360:rate=25:duration=8 -f lavfi -i sine=frequency=440:duration=8 \
  -filter_complex "[0:v]split=2[v0][v1in];[v1in]scale=320:180[v1]" \
  -map "[v0]" -map 1:a -map "[v1]" -map 1:a \
  -c:v libx264 -preset veryfast -profile:v main -g 50 -keyint_min 50 -sc_threshold 0 -pix_fmt yuv420p \
  -b:v:0 400k -maxrate:v:0 450k -bufsize:v:0 800k -b:v:1 150k -maxrate:v:1 170k -bufsize:v:1 300k \
  -c:a aac -b:a 48k -ac 1 \
  -f hls -hls_time 2 -hls_playlist_type vod -hls_flags independent_segments \
  -hls_segment_filename 'v%v/seg_%03d.ts' -master_pl_name index.m3u8 \
  -var_stream_map "v:0,a:0 v:1,a:1" 'v%v/index.m3u8'
du -sh "$out"
