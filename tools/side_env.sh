# Sourced by tools/build_vllm_env.sh and tools/build_seed_env.sh: what the side environments share.
# only_linux_x86_64 VENV LABEL MESSAGE: off Linux x86_64 (where the pinned wheels exist), write MESSAGE to
# VENV/UNAVAILABLE (quantedu reports it and those parts of the course skip) and end the build successfully;
# on Linux x86_64, remove a stale note and go on.
only_linux_x86_64() {
  local venv=$1 label=$2 msg=$3
  if [ "$(uname -s)" != Linux ] || [ "$(uname -m)" != x86_64 ]; then
    echo "== $label: $msg"
    mkdir -p "$venv"
    echo "$msg" > "$venv/UNAVAILABLE"
    exit 0
  fi
  rm -f "$venv/UNAVAILABLE"
}
