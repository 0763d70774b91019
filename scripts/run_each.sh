# Sourced by the reproduction scripts: `run <name> <overrides...>` trains one run into $out/<name> with the
# script's shared overrides ($extra). A run that fails (diverged: exit 3, collapsed: 4) leaves the others to run
# and the report to tabulate them; the first failure's status is the script's ($rc). A stop (Ctrl-C, SIGTERM: 130)
# stops the script; a re-run continues it.
rc=0
run() {
  local name=$1 r=0; shift
  binexp train "$@" ${extra[@]+"${extra[@]}"} hydra.run.dir="$out/$name" callbacks.rich_progress_bar=null || r=$?
  (( r != 130 )) || exit 130
  if (( r )); then
    echo "${0##*/}: $name failed (exit $r); going on with the other runs" >&2
    (( rc )) || rc=$r
  fi
}
