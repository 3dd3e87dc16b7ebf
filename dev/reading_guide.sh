#!/bin/sh
# The line ranges of deit.c's sections (I.1 .. I.10, II, III.1 .. III.6), from its banners:
#   sh dev/reading_guide.sh          prints "SECTION FIRST-LAST" per section
#   sh dev/reading_guide.sh --check  checks the README's reading guide against them (make test)
#   sh dev/reading_guide.sh --fix    rewrites the README's line column with them
# A section runs from its banner to the line before the next one.
set -u
cd "$(dirname "$0")/.." || exit 1
ranges=$(awk '
    /^\/\* =+$/ || /^\/\* #+$/ { open = NR }           # the first line of a banner
    /^ \* (I|III)\.[0-9]+[a-z]? / && open { id = $2; start[++n] = open; name[n] = id; open = 0 }
    /^ \*  PART II: / && open { start[++n] = open; name[n] = "II"; open = 0 }
    /^ \*  PART III: / && open { start[++n] = open; name[n] = "III"; open = 0 }
    END { for (i = 1; i <= n; i++) if (name[i] != "III") print name[i], start[i] "-" (i < n ? start[i + 1] - 1 : NR) }
' deit.c)
case "${1:-}" in
--check)
    bad=0
    while read -r id span; do
        row=$(grep -E "^\| \*?\*?$id\*?\*? \|" README.md | head -n 1)
        [ -n "$row" ] || { echo "reading guide: README.md has no row for section $id"; bad=1; continue; }
        case "$row" in *"| $span |") ;; *) echo "reading guide: section $id is lines $span; README.md says: $row"; bad=1 ;; esac
    done <<EOF
$ranges
EOF
    [ $bad = 0 ] && echo "reading guide: ok, README.md's line ranges match deit.c"
    exit $bad ;;
--fix)
    tmp=$(mktemp) || exit 1
    cp README.md "$tmp"
    while read -r id span; do
        awk -v id="$id" -v span="$span" '
            BEGIN { pat = "^\\| \\*?\\*?" id "\\*?\\*? \\|" }
            $0 ~ pat && !done { sub(/\| [^|]* \|$/, "| " span " |"); done = 1 } { print }' "$tmp" > "$tmp.new" && mv "$tmp.new" "$tmp"
    done <<EOF
$ranges
EOF
    cp "$tmp" README.md && rm -f "$tmp"
    echo "reading guide: README.md's line column rewritten" ;;
*) echo "$ranges" ;;
esac
