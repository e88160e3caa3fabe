#!/bin/bash
# start.sh ROOT -- starts a private Dovecot (IMAP, LMTP, auth) and Postfix (SMTP relay into Dovecot)
# on 127.0.0.1 only, with every file under ROOT. Stop them with stop.sh ROOT.
#
# 127.0.0.1 ports: 10143 IMAP (STARTTLS), 10993 IMAPS, 10024 LMTP, 10030 Dovecot auth (SASL for
# Postfix), 10025 Postfix SMTP (relays for 127.0.0.0/8, delivers @mail.test over LMTP), 10587
# Postfix submission (AUTH via Dovecot). Users alice, bob, carol, password "password", domain
# mail.test. Master user gwmaster / masterpass logs in as anyone: "alice*gwmaster".
set -euo pipefail
R=${1:?usage: start.sh ROOT}
mkdir -p "$R"
R=$(cd "$R" && pwd)
# vmail (Dovecot's mail processes) and postfix must be able to walk into ROOT.
chmod 755 "$R"
mkdir -p "$R"/{tls,mail,postfix,postfix-spool,postfix-data}
chown vmail:vmail "$R/mail"
chown postfix "$R/postfix-data"

# Self-signed cert: CN and a DNS entry of 127.0.0.1 because mbsync (isync 1.4) ignores IP SANs.
if [ ! -s "$R/tls/cert.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=127.0.0.1 \
    -addext "subjectAltName=IP:127.0.0.1,DNS:127.0.0.1,DNS:localhost" \
    -keyout "$R/tls/key.pem" -out "$R/tls/cert.pem" 2>/dev/null
  chmod 644 "$R/tls/key.pem"   # test-only key; dovecot reads it as root anyway
fi

printf '%s:{PLAIN}password::::::\n' alice bob carol > "$R/users"
printf 'gwmaster:{PLAIN}masterpass::::::\n' > "$R/master-users"

cat > "$R/dovecot.conf" <<EOF
protocols = imap lmtp
listen = 127.0.0.1
base_dir = $R/dovecot-run
state_dir = $R/dovecot-state
log_path = $R/dovecot.log
first_valid_uid = 100
ssl = yes
ssl_cert = <$R/tls/cert.pem
ssl_key = <$R/tls/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Ln
auth_failure_delay = 0
auth_master_user_separator = *
# Master users log in as another user ("alice*gwmaster"); result_success=continue makes Dovecot
# check that the target user exists in the regular passdb below.
passdb {
  driver = passwd-file
  master = yes
  args = scheme=PLAIN $R/master-users
  result_success = continue
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN $R/users
}
userdb {
  driver = passwd-file
  args = $R/users
  default_fields = uid=vmail gid=vmail home=$R/mail/%n
}
mail_location = maildir:~/Maildir
namespace inbox {
  inbox = yes
  mailbox Sent {
    special_use = \\Sent
    auto = subscribe
  }
  mailbox Trash {
    special_use = \\Trash
    auto = subscribe
  }
  mailbox Junk {
    special_use = \\Junk
    auto = subscribe
  }
}
# Every test connects from 127.0.0.1; the default of 10 per user and IP is far too low.
mail_max_userip_connections = 2000
default_process_limit = 500
default_client_limit = 4000
protocol lmtp {
  postmaster_address = postmaster@mail.test
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = 10143
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = 10993
    ssl = yes
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = 10024
  }
}
# No per-IP auth penalty (anvil): every test logs in from 127.0.0.1, and one test's failed logins
# would otherwise delay every later login of the run by 2-15 s. gatewayd's own throttling is what
# the tests check, not Dovecot's.
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
service auth {
  inet_listener {
    address = 127.0.0.1
    port = 10030
  }
}
EOF

cat > "$R/postfix/main.cf" <<EOF
compatibility_level = 3.6
config_directory = $R/postfix
queue_directory = $R/postfix-spool
data_directory = $R/postfix-data
maillog_file = $R/postfix.log
maillog_file_prefixes = $R
myhostname = mx.mail.test
mydomain = mail.test
myorigin = \$mydomain
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
local_transport = error:local delivery disabled
alias_maps =
alias_database =
virtual_mailbox_domains = mail.test
virtual_mailbox_maps = texthash:$R/postfix/vmailbox
virtual_transport = lmtp:inet:127.0.0.1:10024
default_transport = error:outbound mail disabled in tests
relay_transport = error:outbound mail disabled in tests
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_tls_cert_file = $R/tls/cert.pem
smtpd_tls_key_file = $R/tls/key.pem
smtpd_tls_security_level = may
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:10030
message_size_limit = 52428800
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_error_sleep_time = 0
biff = no
EOF
printf '%s@mail.test OK\n' alice bob carol > "$R/postfix/vmailbox"
cat > "$R/postfix/master.cf" <<'EOF'
127.0.0.1:10025 inet n  -       n       -       -       smtpd
127.0.0.1:10587 inet n  -       n       -       -       smtpd
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF

doveconf -c "$R/dovecot.conf" -n >/dev/null
dovecot -c "$R/dovecot.conf" </dev/null >/dev/null 2>&1      # daemonizes; keep its fds off our pipes
postfix -c "$R/postfix" check
postfix -c "$R/postfix" start </dev/null >/dev/null 2>&1

for p in 10143 10993 10024 10030 10025 10587; do          # wait until every port answers (10 s each)
  for i in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && continue 2
    sleep 0.1
  done
  echo "start.sh: nothing answers on 127.0.0.1:$p; logs:" >&2
  tail -n 20 "$R/dovecot.log" "$R/postfix.log" >&2 2>/dev/null || true
  exit 1
done
echo "dovecot pid $(cat "$R/dovecot-run/master.pid"), postfix pid $(tr -d ' ' < "$R/postfix-spool/pid/master.pid")"
