#ifndef CCRYPTO_SHIM_H
#define CCRYPTO_SHIM_H
// OpenSSL's libcrypto for the server's secrets: HMAC-SHA256 (token signatures), scrypt (password hashes),
// the kernel-seeded random generator and a constant-time compare. All plain functions.
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#endif
