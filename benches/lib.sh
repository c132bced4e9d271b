# Helpers the side-by-side benchmark scripts share (sourced by benches/run.sh and
# benches/gpu_bench.sh): read `key=value` fields from the lines both sides print.

# `field NAME`: the value of NAME=... on each input line.
field() { sed -nE "s/.*\b$1=([^ ]+).*/\1/p"; }
# The median of the numbers on stdin, one a line ("nan" when there are none).
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
