#!/usr/bin/env bash
# A throwaway certificate authority and a server certificate signed by it, for TLS
# tests and the compose `tls` profile. Not for production: use your own CA there.
#
#   scripts/make-certs.sh DIR [NAME...]
#
# Writes into DIR: ca.pem and ca.key (the CA), server.pem and server.key (a server
# certificate whose subject alternative names are NAME... , default `localhost`), and
# server-bundle.pem (certificate and key in one file, for proxies such as stunnel).
# An existing CA in DIR is reused, so several server certificates can share it.
set -euo pipefail
dir=${1:?usage: make-certs.sh DIR [NAME...]}
shift
names=("${@:-localhost}")
mkdir -p "$dir"
cd "$dir"
command -v openssl >/dev/null || { echo "make-certs: openssl is missing (apt-get install openssl)" >&2; exit 1; }

if [ ! -s ca.pem ] || [ ! -s ca.key ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=users-pipeline test CA" \
    -keyout ca.key -out ca.pem 2>/dev/null
fi
san=""
for n in "${names[@]}"; do
  if [[ $n =~ ^[0-9.]+$ ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
san=${san%,}
openssl req -newkey rsa:2048 -nodes -subj "/CN=${names[0]}" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' "$san" >server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
  -extfile server.ext -out server.pem 2>/dev/null
cat server.pem server.key >server-bundle.pem
chmod 600 server.key ca.key server-bundle.pem
rm -f server.csr server.ext
echo "make-certs: $dir/server.pem for ${names[*]}, signed by $dir/ca.pem" >&2
