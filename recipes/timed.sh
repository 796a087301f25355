# Sourced by the recipes. timed NAME COMMAND...: run once (skipped when NAME is in $WORK/times.tsv),
# log to $WORK/logs/NAME.log, append NAME<TAB>wall seconds to $WORK/times.tsv; stop on failure.
mkdir -p "$WORK/logs"
touch "$WORK/times.tsv"
timed() {
  local name=$1; shift
  if grep -q "^$name	" "$WORK/times.tsv"; then echo "skip $name (done)"; return; fi
  echo "$(date +%T) $name"
  local start=$SECONDS
  "$@" > "$WORK/logs/$name.log" 2>&1 || { echo "FAILED $name: see $WORK/logs/$name.log"; exit 1; }
  printf '%s\t%s\n' "$name" $((SECONDS - start)) >> "$WORK/times.tsv"
}
