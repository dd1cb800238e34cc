#!/usr/bin/env bash
# The Autobahn WebSocket test suite's `wstest` (PyPI autobahntestsuite 0.8.2), installed privately.
# Usage: deploy/dev/wstest.sh install | path | run ARGS...
#   install    idempotent; a second run only reads the version stamp
#   path       installs if needed, then prints the path of the runnable `wstest` wrapper (stdout)
#   run ARGS   installs if needed, then runs `wstest ARGS...` (e.g. run -m fuzzingclient -s spec.json)
# Into ${EDGE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-dev}/wstest; install prints only
# progress and errors, on stderr (the tools' own output goes to install.log there).
#
# The suite is Python 2 code only (its latest release too), and bookworm ships no Python 2 nor
# PyPy 2.7. Bullseye still has CPython 2.7.18: its .debs (and the two libraries bookworm dropped,
# libssl1.1 and libffi7, plus libexpat1 and libsqlite3-0, absent from a minimal root) are fetched
# with a private apt configuration (own sources list, state and cache; the Debian archive keyring
# via signed-by) and unpacked with `dpkg -x` into the install folder. The system's apt and dpkg
# are untouched. The wrapper runs that interpreter with LD_LIBRARY_PATH on the unpacked libraries.
# pip 20.3.4 (the last for 2.7) comes from PyPI, then every package at the last version that works
# on 2.7, all pinned by hash. wsaccel and zope.interface build from source: needs gcc, libc6-dev
# and ca-certificates (all in setup.sh's list). amd64 only: the .debs and wheel hashes are pinned.
set -euo pipefail

# --- pins ----------------------------------------------------------------------------------------
# Bullseye (Debian 11) .debs; Depends of python2.7 that a minimal bookworm root lacks are added
# (readline, curses and nis modules are left without theirs: wstest does not import them).
debs=(
  python2.7=2.7.18-8+deb11u1 python2.7-minimal=2.7.18-8+deb11u1
  libpython2.7-minimal=2.7.18-8+deb11u1 libpython2.7-stdlib=2.7.18-8+deb11u1
  libpython2.7-dev=2.7.18-8+deb11u1 # Python.h and pyconfig.h, for wsaccel and zope.interface
  libssl1.1=1.1.1w-0+deb11u1 libffi7=3.3-6 # dropped by bookworm (_ssl, _hashlib; _ctypes)
  libexpat1=2.2.10-2+deb11u5 libsqlite3-0=3.34.1-3 # not in a minimal root (pyexpat, _sqlite3)
)
pip_url=https://files.pythonhosted.org/packages/27/79/8a850fe3496446ff0d584327ae44e7500daf6764ca1a382d2d02789accf7/pip-20.3.4-py2.py3-none-any.whl
pip_sha256=217ae5161a0e08c0fb873858806e3478c9775caffce5168b50ec885e358c199d
# The build tools, installed into the interpreter's own dist-packages.
boot_requirements='
pip==20.3.4 --hash=sha256:217ae5161a0e08c0fb873858806e3478c9775caffce5168b50ec885e358c199d
setuptools==44.1.1 --hash=sha256:27a714c09253134e60a6fa68130f78c7037e5562c4f21f8f318f2ae900d152d5
wheel==0.37.1 --hash=sha256:4bdcd7d840138086126cd09254dc6195fb4fc6f01c050a1d7236f2630db1d22a
'
# The suite and its whole dependency tree (installed with --no-deps, then `pip check`ed).
# Automat 22.10.0 resolves on 2.7 but fails to import there (inspect.getfullargspec): 20.2.0.
requirements='
autobahntestsuite==0.8.2 --hash=sha256:6f28e138798987aba0f9f046f0d3d0e678f08b432c9207b95097522ac4d78506
autobahn==0.10.9 --hash=sha256:3fecc1e2a26a0421128ddcfb4e577f0bc669dd65d0e0fdad1c773965cbcef75a
txaio==2.1.0 --hash=sha256:b94e3dbc83760b68955160fc61a2c34e2798f7a90c41672560f40dfd2946a864
six==1.16.0 --hash=sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254
Twisted==20.3.0 --hash=sha256:7408c6635ee1b96587289283ebe90ee15dbf9614b05857b446055116bc822d29
zope.interface==5.5.2 --hash=sha256:bfee1f3ff62143819499e348f5b8a7f3aa0259f9aca5e0ddae7391d059dce671
attrs==21.4.0 --hash=sha256:2d27e3784d7a565d36ab851fe94887c5eccd6a463168875832a1be79c82828b4
Automat==20.2.0 --hash=sha256:b6feb6455337df834f6c9962d6ccf771515b7d939bca142b29c20c2376bc6111
constantly==15.1.0 --hash=sha256:dd2fa9d6b1a51a83f0d7dd76293d734046aa176e384bf6e33b7e44880eb37c5d
incremental==21.3.0 --hash=sha256:92014aebc6a20b78a8084cdd5645eeaa7f74b8933f70fa3ada2cfbd1e3b54321
hyperlink==21.0.0 --hash=sha256:e6b14c37ecb73e89c77d78cdb4c2cc8f3fb59a885c5b3f819ff4ed80f25af1b4
idna==2.10 --hash=sha256:b97d804b1e9b523befed77c48dacec60e6dcb0b5391d57af6a65a312a90648c0
PyHamcrest==1.10.1 --hash=sha256:f7ae19ddfd71f11a421bcec9608d708c0fab816db98b51fdbc672a6d99a30874
klein==20.6.0 --hash=sha256:00a74f4da360259cfa0a3cfb949fa04f7c17cd8698b64b3c1a3ad2cd6c52dc8b
Tubes==0.2.1 --hash=sha256:28f60dc0be0555a953595f8f1a96a81e96ea6833df7677d77fbe70782605e5b5
Werkzeug==1.0.1 --hash=sha256:2de2a5db0baeae7b2d2664949077c2ac63fbd16d98da0ff71837f7d1dea3fd43
Jinja2==2.11.3 --hash=sha256:03e47ad063331dd6a3f04a43eddca8a966a26ba0c5b7207a9a9e4e08f1b29419
MarkupSafe==1.1.1 --hash=sha256:43a55c2930bbc139570ac2452adf3d70cdbb3cfe5912c71cdce1c2c6bbd9c5d1
pyOpenSSL==21.0.0 --hash=sha256:8935bd4920ab9abfebb07c41a4f58296407ed77f04bd1a92914044b848ba1ed6
cryptography==3.3.2 --hash=sha256:c7390f9b2119b2b43160abb34f63277a638504ef8df99f11cb52c1fda66a2e6f
cffi==1.15.1 --hash=sha256:ed9cb427ba5504c1dc15ede7d516b84757c3e3d7868ccc85121d9310d27eed0b
pycparser==2.21 --hash=sha256:8ee45429555515e1f6b185e78100aea234072576aa43ab53aefcae078162fca9
enum34==1.1.10 --hash=sha256:a98a201d6de3f2ab3db284e70a33b0f896fbf35f8086594e8c9e74b909058d53
ipaddress==1.0.23 --hash=sha256:6e0f4a39e66cb5bb9a137b00276a2eff74f93b71dcbdad6f10ff7df9d3557fcc
service-identity==21.1.0 --hash=sha256:f0b0caac3d40627c3c04d7a51b6e06721857a0e10a8775f2d1d7e72901b3a7db
pyasn1==0.4.8 --hash=sha256:39c7e2ec30515947ff4e87fb6f456dfc6e84857d34be479c9d4a4ba4bf46aa5d
pyasn1-modules==0.2.8 --hash=sha256:a50b808ffeb97cb3601dd25981f6b016cbb3d31fbf57a8b8a87428e6158d0c74
unittest2==1.1.0 --hash=sha256:13f77d0875db6d9b435e1d4f41e74ad4cc2eb6e1d5c824996092b3430f088bb8
argparse==1.4.0 --hash=sha256:c31647edb69fd3d465a847ea3157d37bed1f95f19760b11a47aa91c04b666314
linecache2==1.0.0 --hash=sha256:e78be9c0a0dfcbac712fe04fbf92b96cddae80b1b842f24248214c8496f006ef
traceback2==1.4.0 --hash=sha256:8253cebec4b19094d67cc5ed5af99bf1dba1285292226e98a31929f87a5d6b23
typing==3.10.0.0 --hash=sha256:c7219ef20c5fbf413b4567092adfc46fa6203cb8454eda33c3fc1afe1398a308
wsaccel==0.6.6 --hash=sha256:18efec0a7182587ba97102b4cd8df7b4f665f45d7ca36f19783f5f081ea114ea
ujson==2.0.3 --hash=sha256:6217c63a36e9b26e9271e686d212397ce7fb04c07d85509dd4e2ed73493320f8
'
format=1 # bump when the layout below changes
stamp_value=$(printf '%s\n' "$format" "${debs[@]}" "$pip_sha256" "$boot_requirements" "$requirements" | sha256sum | cut -c1-16)

# --- where ---------------------------------------------------------------------------------------
tools=${EDGE_TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:?wstest: neither EDGE_TOOLS_DIR nor HOME is set}/.cache}/edge-dev}
root=$tools/wstest
py=$root/py            # the unpacked .debs (usr/bin/python2.7, usr/lib/...)
site=$root/site        # the suite and its dependencies (pip --target)
wrapper=$root/bin/wstest
stamp=$root/.installed
log=$root/install.log

die() { echo "wstest: $*" >&2; exit 1; }
installed() { [[ -x $wrapper && -f $stamp && $(<"$stamp") == "$stamp_value" ]]; }

# Runs a step with its output in install.log; on failure shows the end of the log.
step() {
  local what=$1; shift
  echo "wstest: $what" >&2
  echo "=== $what: $*" >>"$log"
  if ! "$@" >>"$log" 2>&1; then
    echo "wstest: failed: $what; the end of $log:" >&2
    tail -n 25 "$log" | sed 's/^/  | /' >&2
    exit 1
  fi
}

fetch_debs() { # DIR: apt-get download of the pinned bullseye .debs, with apt's own config private
  local apt=$1/apt
  mkdir -p "$apt"/etc "$apt"/parts "$apt"/lists/partial "$apt"/cache/archives/partial "$1/debs"
  : >"$apt/status"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main" \
    >"$apt/etc/sources.list"
  local o=(
    -o Dir::Etc::SourceList="$apt/etc/sources.list" -o Dir::Etc::SourceParts="$apt/parts"
    -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts="$apt/parts"
    -o Dir::State="$apt" -o Dir::State::Lists="$apt/lists" -o Dir::State::status="$apt/status"
    -o Dir::Cache="$apt/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)"
    -o Acquire::Languages=none -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false
  )
  apt-get "${o[@]}" -q update
  (cd "$1/debs" && apt-get "${o[@]}" -q download "${debs[@]}")
}

unpack_debs() { # DIR
  local d
  for d in "$1"/debs/*.deb; do dpkg -x "$d" "$py"; done
  rm -rf "$py"/usr/share/doc "$py"/usr/share/man "$py"/usr/lib/x86_64-linux-gnu/libpython2.7.a \
    "$py"/usr/lib/python2.7/config-x86_64-linux-gnu/libpython2.7.a
}

# bullseye is not merged-/usr: libexpat1 and libsqlite3-0 unpack into lib/, the others into usr/lib/.
libs=$py/lib/x86_64-linux-gnu:$py/usr/lib/x86_64-linux-gnu
python2() { LD_LIBRARY_PATH=$libs "$py/usr/bin/python2.7" -E -s "$@"; }

fetch_pip() { # FILE: the pip wheel, by the interpreter itself (no curl in a minimal root)
  python2 - "$pip_url" "$pip_sha256" "$1" "$cafile" <<'EOF'
import hashlib, ssl, sys, urllib2
url, sha, out, cafile = sys.argv[1:]
data = urllib2.urlopen(url, context=ssl.create_default_context(cafile=cafile), timeout=120).read()
got = hashlib.sha256(data).hexdigest()
if got != sha:
    sys.exit("sha256 of %s is %s, expected %s" % (url, got, sha))
open(out, "wb").write(data)
EOF
}

install() {
  installed && return 0
  [[ $(dpkg --print-architecture) == amd64 ]] || die "the pins (bullseye .debs, wheel hashes) are for amd64, not $(dpkg --print-architecture)"
  [[ -r /usr/share/keyrings/debian-archive-keyring.gpg ]] || die "no /usr/share/keyrings/debian-archive-keyring.gpg (apt-get install debian-archive-keyring)"
  command -v gcc >/dev/null || die "gcc is needed to build wsaccel and zope.interface (apt-get install gcc libc6-dev)"
  [[ -f /usr/include/stdio.h ]] || die "the C headers are needed to build wsaccel and zope.interface (apt-get install libc6-dev)"
  cafile=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
  [[ -r $cafile ]] || die "no CA bundle at $cafile for PyPI over HTTPS (apt-get install ca-certificates)"

  # Nothing of the caller's Python or pip set-up leaks in; a mirror (PIP_INDEX_URL) is kept, the
  # hashes hold whichever index serves the files.
  local index=${PIP_INDEX_URL:-https://pypi.org/simple} v
  for v in $(compgen -e); do [[ $v == PIP_* || $v == PYTHON* ]] && unset "$v"; done
  export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_PYTHON_VERSION_WARNING=1 PYTHONNOUSERSITE=1
  # C extensions: Python.h from libpython2.7-dev; its pyconfig.h includes <x86_64-linux-gnu/python2.7/pyconfig.h>.
  export CC="gcc -pthread" LDSHARED="gcc -pthread -shared" CPPFLAGS="" LDFLAGS=""
  export CFLAGS="-O2 -I$py/usr/include/python2.7 -I$py/usr/include"

  local t0=$SECONDS
  rm -rf "$root"
  mkdir -p "$root/bin" "$py"
  : >"$log"
  local tmp=$root/tmp
  mkdir -p "$tmp"
  step "downloading CPython 2.7.18 from Debian bullseye (private apt state)" fetch_debs "$tmp"
  step "unpacking the .debs into $py" unpack_debs "$tmp"
  step "checking the interpreter's modules" python2 -c 'import ssl, hashlib, ctypes, sqlite3, pyexpat, zlib, bz2, json; print(ssl.OPENSSL_VERSION)'
  step "downloading pip 20.3.4 from PyPI" fetch_pip "$tmp/pip-20.3.4-py2.py3-none-any.whl"
  local pipopts=(--no-cache-dir --no-deps --require-hashes --index-url "$index" --cert "$cafile" --progress-bar off)
  local dist=$py/usr/lib/python2.7/dist-packages
  printf '%s' "$boot_requirements" >"$tmp/boot.txt"
  step "installing pip, setuptools and wheel" \
    python2 "$tmp/pip-20.3.4-py2.py3-none-any.whl/pip" install "${pipopts[@]}" --target "$dist" -r "$tmp/boot.txt"
  # The suite's folder joins sys.path through a .pth of the interpreter (its own .pth files, such
  # as zope's namespace, are read too), relative to sys.prefix so the install could move.
  echo "import os, site, sys; site.addsitedir(os.path.join(sys.prefix, '..', '..', 'site'))" >"$dist/wstest-site.pth"
  printf '%s' "$requirements" >"$tmp/requirements.txt"
  step "installing autobahntestsuite 0.8.2 and its dependencies (builds wsaccel, zope.interface)" \
    python2 -m pip install "${pipopts[@]}" --no-build-isolation --target "$site" -r "$tmp/requirements.txt"
  rm -rf "$site/bin" # console scripts with this prefix's python in the shebang; bin/wstest replaces them
  step "checking the dependency tree" python2 -m pip check
  step "compiling the standard library" python2 -m compileall -q "$py/usr/lib/python2.7"

  cat >"$wrapper" <<'EOF'
#!/bin/sh
# wstest (autobahntestsuite 0.8.2) on the private CPython 2.7 of deploy/dev/wstest.sh.
root=$(dirname "$(dirname "$(readlink -f "$0")")")
LD_LIBRARY_PATH="$root/py/lib/x86_64-linux-gnu:$root/py/usr/lib/x86_64-linux-gnu" \
  exec "$root/py/usr/bin/python2.7" -E -s -B -W "ignore:Python 2 is no longer supported" \
  -c 'import sys; sys.argv[0] = "wstest"; from autobahntestsuite.wstest import run; sys.exit(run())' "$@"
EOF
  chmod +x "$wrapper"
  step "checking wstest" "$wrapper" --autobahnversion
  rm -rf "$tmp"
  echo "$stamp_value" >"$stamp"
  echo "wstest: installed in $root ($(du -sh "$root" | cut -f1), $((SECONDS - t0)) s)" >&2
}

locked_install() { # one installer at a time (tests may ask for the path in parallel)
  mkdir -p "$tools"
  installed && return 0
  exec 9>"$tools/wstest.lock"
  flock 9
  install
  exec 9>&-
}

case "${1:-}" in
  install) locked_install ;;
  path) locked_install; echo "$wrapper" ;;
  run) shift; locked_install; exec "$wrapper" "$@" ;;
  *) sed -n '2,6p' "$0" >&2; exit 2 ;;
esac
