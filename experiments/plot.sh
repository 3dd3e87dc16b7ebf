#!/bin/sh
# Learning curves as an SVG file, from deit's CSV logs, with nothing but awk.
#
#   experiments/plot.sh OUT.svg "TITLE" LABEL=LOG.csv[:COLUMN[:XDIV]] ...
#
# Left panel: test accuracy per epoch (COLUMN of the log: 5 = averaged heads (default),
# 6 = class head, 7 = distillation head). Right panel: train loss per epoch (column 4), at the
# epochs where the test accuracy was measured. XDIV (default 1) divides the epoch numbers, e.g.
# 10 for a run on 10% of the data plotted in full-data epochs; XLABEL names the x axis.
# HOURS=1 puts the hours of training (the log's elapsed_s / 3600) on the x axis instead, from 0:
# the time-to-accuracy curves.
# When a log has an epoch twice (a run resumed after a crash between writing the log row and
# the checkpoint), the last row counts.
set -eu
[ $# -ge 3 ] || { echo "usage: $0 OUT.svg TITLE LABEL=LOG.csv[:COLUMN[:XDIV]] ..." >&2; exit 2; }
out=$1 title=$2
shift 2
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
i=0
for spec in "$@"; do
    label=${spec%%=*} rest=${spec#*=}
    file=${rest%%:*} col=5 xdiv=1
    [ "$file" != "$rest" ] && col=${rest#*:}
    case $col in *:*) xdiv=${col#*:} col=${col%%:*} ;; esac
    [ -f "$file" ] || { echo "$0: $file: no such log" >&2; exit 1; }
    # series index, label, epoch, accuracy, loss
    awk -F, -v s="$i" -v l="$label" -v c="$col" -v d="$xdiv" -v hours="${HOURS:-0}" \
        'NR > 1 && $c != "" { acc[$1 + 0] = $c; loss[$1 + 0] = $4; h[$1 + 0] = $9 / 3600; if ($1 + 0 > n) n = $1 + 0 }
         END { for (e = 1; e <= n; e++) if (e in acc) printf "%s\t%s\t%g\t%s\t%s\n", s, l, hours ? h[e] : e / d, acc[e], loss[e] }' "$file" >> "$tmp"
    i=$((i + 1))
done

[ "${HOURS:-0}" = 1 ] && XLABEL=${XLABEL:-hours of training}
awk -F'\t' -v title="$title" -v xlabel="${XLABEL:-epoch}" -v hours="${HOURS:-0}" '
function esc(s) { gsub(/&/, "\\&amp;", s); gsub(/</, "\\&lt;", s); return s }
{ s = $1; label[s] = $2; n[s]++; ep[s, n[s]] = $3; acc[s, n[s]] = $4; loss[s, n[s]] = $5
  if ($3 > emax) emax = $3; if ($4 > amax) amax = $4; if (amin == "" || $4 < amin) amin = $4
  if ($5 > lmax) lmax = $5; if (lmin == "" || $5 < lmin) lmin = $5; if (s + 1 > ns) ns = s + 1 }
END {
  split("#1f77b4 #d62728 #2ca02c #ff7f0e #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf", col, " ")
  W = 900; H = 380; pw = 360; ph = 260; top = 50
  amin = int(amin / 10) * 10; amax = (int(amax / 10) + 1) * 10; if (amax > 100) amax = 100
  lmin = int(lmin * 10) / 10; lmax = (int(lmax * 10) + 1) / 10
  if (emax < 2) emax = 2
  x1 = hours ? 0 : 1; if (hours) emax = (emax == int(emax)) ? emax : int(emax) + 1  # x axis from x1 to emax
  printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H + 20 * int((ns + 2) / 3)
  printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
  printf "<text x=\"%d\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">%s</text>\n", W / 2, esc(title)
  for (p = 0; p < 2; p++) {
    x0 = 70 + p * 450; y0 = top; lo = p ? lmin : amin; hi = p ? lmax : amax
    printf "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#444\"/>\n", x0, y0, pw, ph
    printf "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", x0 + pw / 2, y0 - 8, p ? "train loss" : "test accuracy (%)"
    printf "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", x0 + pw / 2, y0 + ph + 34, esc(xlabel)
    nt = p ? 5 : (hi - lo) / 10
    for (k = 0; k <= nt; k++) {
      v = lo + (hi - lo) * k / nt; y = y0 + ph - ph * k / nt
      printf "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", x0, y, x0 + pw, y
      printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", x0 - 6, y + 4, p ? sprintf("%.2f", v) : sprintf("%g", v)
    }
    step = emax <= 10 ? 1 : (emax <= 50 ? 5 : (emax <= 100 ? 10 : 50))
    for (e = 0; e <= emax; e += step) if (e > 0 || step == 1 || hours) {
      x = x0 + pw * (e - x1) / (emax - x1); if (e < x1) continue
      printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d</text>\n", x, y0 + ph + 16, e
    }
    for (s = 0; s < ns; s++) {
      pts = ""
      for (j = 1; j <= n[s]; j++) {
        v = p ? loss[s, j] : acc[s, j]
        x = x0 + pw * (ep[s, j] - x1) / (emax - x1); y = y0 + ph - ph * (v - lo) / (hi - lo)
        pts = pts sprintf("%.1f,%.1f ", x, y)
      }
      printf "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"%s\"/>\n", col[s % 10 + 1], pts
      if (n[s] == 1) printf "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", x, y, col[s % 10 + 1]
    }
  }
  for (s = 0; s < ns; s++) {
    lx = 70 + (s % 3) * 280; ly = top + ph + 60 + 20 * int(s / 3)
    last = acc[s, n[s]]
    printf "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"3\"/>\n", lx, ly - 4, lx + 24, ly - 4, col[s % 10 + 1]
    printf "<text x=\"%d\" y=\"%d\">%s (%s%%)</text>\n", lx + 30, ly, esc(label[s]), last
  }
  print "</svg>"
}' "$tmp" > "$out"
echo "wrote $out"
