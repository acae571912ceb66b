#!/usr/bin/env bash
# Builds udpecho_VERSION_amd64.deb with dpkg-deb: the release binary with the Swift runtime linked in
# (-static-stdlib: it runs without a Swift toolchain), man pages and shell completions generated from the
# argument-parser definitions (so they never drift from --help), the systemd units, a copyright file and a changelog.
#
# usage: scripts/package-deb.sh [OUTPUT-DIRECTORY]      (default: .build/deb)
# Needs: Swift, dpkg-deb, gzip; lintian to check the result (scripts/package-deb.sh then runs it if installed).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/.build/deb}
scratch=$here/.build-static
version=$(grep -o 'version: "[^"]*"' "$here/Sources/udpecho/UDPEchoCommand.swift" | cut -d'"' -f2)
arch=$(dpkg --print-architecture)
package=udpecho
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

# The runtime is linked in with -Xswiftc -static-stdlib, which is what --static-swift-stdlib does, but as a build
# setting that `swift package` also takes: the documentation (PackageTests) then builds in the same folder without
# compiling everything again.
static=(-c release -Xswiftc -static-stdlib --scratch-path "$scratch" --package-path "$here")
binary=$(swift build "${static[@]}" --show-bin-path)/udpecho
rm -f "$binary"  # always linked again here, with the runtime in it
swift build "${static[@]}" --product udpecho >&2
if ldd "$binary" | grep -qE 'libswift|libFoundation|libdispatch|libBlocksRuntime'; then
  echo "package-deb: the binary still links the Swift runtime dynamically" >&2
  exit 1
fi

install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/man/man1" "$root/usr/share/doc/$package" \
  "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d" "$root/lib/systemd/system"
install -m 0755 "$binary" "$root/usr/bin/udpecho"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/udpecho"

# Manuals: one page per command, from the same definitions as --help: argument-parser's generate-manual reads them
# from the binary being packaged, and packaging/manual.awk makes the pages what man and lintian expect.
swift build "${static[@]}" --product generate-manual >&2
manuals=$(mktemp -d)
"$(dirname "$binary")/generate-manual" "$binary" --multi-page --date "$(date -u +%Y-%m-%d)" \
  --authors "the udpecho developers" --output-directory "$manuals" >&2
for page in "$manuals"/*.1; do
  command=$(basename "$page" .1 | tr . ' ')
  [ "$command" != "udpecho help" ] || continue  # the help subcommand is argument-parser's own
  awk -v command="$command" -f "$here/packaging/manual.awk" "$page" |
    gzip -9n > "$root/usr/share/man/man1/$(echo "$command" | tr ' ' -).1.gz"
done
rm -rf "$manuals"

# (bash-completion sources its files: no #! line.)
"$root/usr/bin/udpecho" --generate-completion-script bash | sed '1{/^#!/d}' \
  > "$root/usr/share/bash-completion/completions/udpecho"
"$root/usr/bin/udpecho" --generate-completion-script zsh > "$root/usr/share/zsh/vendor-completions/_udpecho"
"$root/usr/bin/udpecho" --generate-completion-script fish > "$root/usr/share/fish/vendor_completions.d/udpecho.fish"
chmod 0644 "$root"/usr/share/*/completions/* "$root"/usr/share/zsh/vendor-completions/* \
  "$root"/usr/share/fish/vendor_completions.d/*

# The units, pointing at the packaged binary; installed, not enabled.
for unit in udpecho.service udpecho.socket udpecho-mesh.service; do
  sed 's#/usr/local/bin/udpecho#/usr/bin/udpecho#' "$here/contrib/systemd/$unit" > "$root/lib/systemd/system/$unit"
  chmod 0644 "$root/lib/systemd/system/$unit"
done

install -d "$root/usr/share/lintian/overrides"
install -m 0644 "$here/packaging/lintian-overrides" "$root/usr/share/lintian/overrides/$package"
cp "$here/packaging/copyright" "$root/usr/share/doc/$package/copyright"
gzip -9n < "$here/packaging/changelog" > "$root/usr/share/doc/$package/changelog.Debian.gz"
chmod 0644 "$root/usr/share/doc/$package"/*

# Dependencies: the shared libraries the binary needs, by the packages that hold them.
owners=()
for library in $(ldd "$root/usr/bin/udpecho" | awk '/=>/ {print $3}'); do
  real=$(readlink -f "$library")
  for candidate in "$library" "$real" "${library#/usr}" "${real#/usr}" "/usr$library" "/usr$real"; do
    if owner=$(dpkg -S "$candidate" 2>/dev/null); then
      owners+=("${owner%%:*}")
      break
    fi
  done
done
depends=$(printf '%s\n' "${owners[@]}" | sort -u | paste -sd, | sed 's/,/, /g')
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: $package
Version: $version-1
Architecture: $arch
Maintainer: udpecho developers <udpecho@example.org>
Installed-Size: $size
Depends: $depends
Section: net
Priority: optional
Homepage: https://example.org/udpecho
Description: UDP echo server, client and path measurement tool
 udpecho is a UDP echo server (RFC 862) that is safe to expose, with a client,
 ping and bench over UDP echo, a STAMP (RFC 8762) reflector and sender, path
 MTU discovery, per-direction marking and ECMP path diagnosis, and a latency
 mesh agent with Prometheus metrics.
CONTROL
chmod 0644 "$root/DEBIAN/control"
find "$root" -type d -exec chmod 0755 {} +

mkdir -p "$out"
deb="$out/${package}_${version}-1_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
echo "$deb"
if command -v lintian >/dev/null; then
  lintian --info "$deb" >&2 || true
fi
