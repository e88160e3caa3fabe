#!/bin/sh
# install.sh -- installs the real mail peers the tests run against (Debian 12, as root).
#
# Idempotent and fast: when every tool is already there it does nothing (no apt at all).
# Never lets a package start a stock daemon on all interfaces: policy-rc.d forbids it for the
# duration of the install (the tests start private instances on 127.0.0.1 only, see start.sh).
set -eu

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/local/bin/$1" ]; }

missing=""
for b in dovecot postfix swaks mbsync smtp-sink curl openssl promtool; do
  have "$b" || missing="$missing $b"
done
# Parts that have no binary of their own on PATH.
[ -x /usr/lib/dovecot/imap ] || missing="$missing dovecot-imapd"
[ -x /usr/lib/dovecot/lmtp ] || missing="$missing dovecot-lmtpd"
perl -MNet::SSLeay -e1 2>/dev/null || missing="$missing libnet-ssleay-perl"   # swaks --tls
getent passwd vmail >/dev/null || missing="$missing vmail-user"               # owns the mail store

# PostgreSQL: only when nothing answers on 127.0.0.1:5432 and no server binaries exist
# (postgres.sh then runs a private cluster from them).
need_pg=0
if ! bash -c '(exec 3<>/dev/tcp/127.0.0.1/5432)' 2>/dev/null \
   && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need_pg=1; missing="$missing postgresql"
fi

if [ -z "$missing" ]; then
  echo "peers: everything installed"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "peers: missing:$missing -- run 'sh tests/peers/install.sh' as root (Debian 12)" >&2
  exit 1
fi
echo "peers: installing for:$missing"

export DEBIAN_FRONTEND=noninteractive
had_policy=0; [ -e /usr/sbin/policy-rc.d ] && had_policy=1
if [ $had_policy = 0 ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
debconf-set-selections <<'SEL'
postfix postfix/main_mailer_type select No configuration
postfix postfix/mailname string localhost
man-db man-db/auto-update boolean false
SEL

pkgs="postfix dovecot-imapd dovecot-lmtpd swaks libnet-ssleay-perl isync curl openssl"
[ $need_pg = 0 ] || pkgs="$pkgs postgresql"

apt-get update -q
apt-get install -y -q --no-install-recommends $pkgs

# promtool (for `promtool check metrics`) ships only inside Debian's prometheus package, whose
# dependencies install ~320 MB of JavaScript for the web UI. Take just the one binary from the
# .deb (19 MB download, 46 MB on disk) instead of installing the server.
if ! have promtool; then
  tmp=$(mktemp -d)
  chown _apt "$tmp" 2>/dev/null || true   # apt downloads as _apt
  (cd "$tmp" && apt-get download -q prometheus >/dev/null \
     && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool)
  install -m 755 "$tmp/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$tmp"
fi

getent passwd vmail >/dev/null || useradd --system --user-group --no-create-home \
  --home-dir /nonexistent --shell /usr/sbin/nologin vmail
echo "peers: installed"
