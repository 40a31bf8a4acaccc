#!/usr/bin/env bash
# System packages from Debian: Fashion-MNIST (`dataset-fashion-mnist`, files in
# /usr/share/datasets/fashion-mnist) and, with --test, Chromium for the report test.
# Without root or apt, kt falls back to torchvision's download and says what to do if that fails too.
set -euo pipefail
want=()
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || want+=(dataset-fashion-mnist)
if [ "${1:-}" = "--test" ]; then command -v chromium >/dev/null || want+=(chromium); fi
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${want[*]} ..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
else
  echo "note: missing Debian packages ${want[*]} and apt-get is not usable here (needs root)." >&2
  echo "      install them with: sudo apt-get install ${want[*]}" >&2
fi
