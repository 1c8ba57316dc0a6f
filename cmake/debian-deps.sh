#!/usr/bin/env bash
# Makes sure the Debian packages the build needs are present. As root it installs the missing ones;
# otherwise it prints the exact command to run and fails.
# Usage: source cmake/debian-deps.sh; rlhf_ensure_packages pkg...
rlhf_ensure_packages() {
  local missing=()
  local p
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "rlhf: installing missing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
      echo "rlhf: apt-get install failed; run: apt-get install -y ${missing[*]}" >&2
      return 1
    }
  else
    echo "rlhf: missing Debian packages. Run:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    return 1
  fi
}

# What the library's build, tests and examples need.
RLHF_BUILD_PACKAGES=(cmake g++ make libeigen3-dev libxtensor-dev libxsimd-dev catch2 libbenchmark-dev libopenmpi-dev openmpi-bin)
