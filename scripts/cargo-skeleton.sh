#!/usr/bin/env sh
# Copies the workspace's manifests (Cargo.toml, Cargo.lock) into DEST with stub sources, so
# that a container build can compile every dependency in a layer that only changes when the
# manifests or the lock file change (what cargo-chef does, without cargo-chef).
#
#   scripts/cargo-skeleton.sh DEST      (run from the workspace root)
#
# Stubs: src/lib.rs (empty), src/main.rs, src/bin/*.rs and every explicit target `path = "…"`
# (`fn main() {}`), build.rs (`fn main() {}`). Real sources replace them in the next layer.
set -eu
dest=${1:?usage: cargo-skeleton.sh DEST}
mkdir -p "$dest"
cp Cargo.toml Cargo.lock "$dest/"
find . -name Cargo.toml -not -path './target/*' -not -path './Cargo.toml' | sort | while read -r manifest; do
  dir=$(dirname "$manifest")
  mkdir -p "$dest/$dir"
  cp "$manifest" "$dest/$dir/"
  if [ -f "$dir/src/lib.rs" ]; then
    mkdir -p "$dest/$dir/src"
    : > "$dest/$dir/src/lib.rs"
  fi
  targets=$(
    { [ -f "$dir/src/main.rs" ] && echo src/main.rs
      [ -d "$dir/src/bin" ] && (cd "$dir" && find src/bin -name '*.rs')
      [ -f "$dir/build.rs" ] && echo build.rs
      sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' "$manifest"
    } | sort -u
  )
  for target in $targets; do
    [ "$target" = src/lib.rs ] && continue
    mkdir -p "$dest/$dir/$(dirname "$target")"
    echo 'fn main() {}' > "$dest/$dir/$target"
  done
done
