#ifndef MESH_AGENT_COPENSSL_SHIM_H
#define MESH_AGENT_COPENSSL_SHIM_H
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ec.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/x509_vfy.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/asn1.h>
#include <openssl/core_names.h>

/* OpenSSL spells these as macros (stack accessors, BIO and SSL controls), which
 * Swift cannot call; each shim is the macro and nothing more. */

static inline int cssl_sk_X509_num(const STACK_OF(X509) *sk) { return sk_X509_num(sk); }
static inline X509 *cssl_sk_X509_value(const STACK_OF(X509) *sk, int i) { return sk_X509_value(sk, i); }
static inline STACK_OF(X509) *cssl_sk_X509_new_null(void) { return sk_X509_new_null(); }
static inline int cssl_sk_X509_push(STACK_OF(X509) *sk, X509 *x) { return sk_X509_push(sk, x); }
static inline void cssl_sk_X509_free(STACK_OF(X509) *sk) { sk_X509_free(sk); }
static inline void cssl_sk_X509_pop_free(STACK_OF(X509) *sk) { sk_X509_pop_free(sk, X509_free); }

static inline int cssl_sk_GENERAL_NAME_num(const GENERAL_NAMES *sk) { return sk_GENERAL_NAME_num(sk); }
static inline GENERAL_NAME *cssl_sk_GENERAL_NAME_value(const GENERAL_NAMES *sk, int i) { return sk_GENERAL_NAME_value(sk, i); }
static inline void cssl_GENERAL_NAMES_free(GENERAL_NAMES *names) { GENERAL_NAMES_free(names); }

static inline long cssl_BIO_get_mem_data(BIO *bio, char **data) { return BIO_get_mem_data(bio, data); }
static inline size_t cssl_BIO_pending(BIO *bio) { return BIO_pending(bio); }
static inline int cssl_BIO_set_mem_eof_return(BIO *bio, int v) { return (int)BIO_set_mem_eof_return(bio, v); }

static inline int cssl_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) { return (int)SSL_CTX_set_min_proto_version(ctx, version); }
static inline int cssl_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) { return (int)SSL_CTX_set_max_proto_version(ctx, version); }
static inline long cssl_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }
static inline long cssl_SSL_CTX_set_options(SSL_CTX *ctx, long options) { return (long)SSL_CTX_set_options(ctx, options); }
static inline int cssl_SSL_set_tlsext_host_name(SSL *ssl, const char *name) { return (int)SSL_set_tlsext_host_name(ssl, name); }
static inline int cssl_SSL_CTX_add_extra_chain_cert(SSL_CTX *ctx, X509 *x) { return (int)SSL_CTX_add_extra_chain_cert(ctx, x); }
static inline int cssl_SSL_CTX_set1_chain(SSL_CTX *ctx, STACK_OF(X509) *chain) { return (int)SSL_CTX_set1_chain(ctx, chain); }

static inline void cssl_OPENSSL_free(void *p) { OPENSSL_free(p); }
static inline EVP_PKEY *cssl_EVP_EC_gen(const char *curve) { return EVP_EC_gen(curve); }
static inline unsigned long cssl_XN_FLAG_RFC2253(void) { return XN_FLAG_RFC2253; }

/* Certificate building and reading (CertificateBuilder, SpiffeVerifier). */
static inline GENERAL_NAMES *cssl_sk_GENERAL_NAME_new_null(void) { return sk_GENERAL_NAME_new_null(); }
static inline int cssl_sk_GENERAL_NAME_push(GENERAL_NAMES *sk, GENERAL_NAME *name) { return sk_GENERAL_NAME_push(sk, name); }
static inline int cssl_sk_GENERAL_SUBTREE_num(const STACK_OF(GENERAL_SUBTREE) *sk) { return sk_GENERAL_SUBTREE_num(sk); }
static inline GENERAL_SUBTREE *cssl_sk_GENERAL_SUBTREE_value(const STACK_OF(GENERAL_SUBTREE) *sk, int i) { return sk_GENERAL_SUBTREE_value(sk, i); }

/* TLS connection layer (TLSContext, TLSConnection). SSL_OP_* are 64-bit in
 * OpenSSL 3 and spelled through a macro Swift cannot expand. */
static inline uint64_t cssl_SSL_CTX_set_options_u64(SSL_CTX *ctx, uint64_t options) { return SSL_CTX_set_options(ctx, options); }
static inline uint64_t cssl_SSL_OP_NO_TICKET(void) { return SSL_OP_NO_TICKET; }
static inline uint64_t cssl_SSL_OP_NO_COMPRESSION(void) { return SSL_OP_NO_COMPRESSION; }
static inline uint64_t cssl_SSL_OP_NO_RENEGOTIATION(void) { return SSL_OP_NO_RENEGOTIATION; }
static inline uint64_t cssl_SSL_OP_CIPHER_SERVER_PREFERENCE(void) { return SSL_OP_CIPHER_SERVER_PREFERENCE; }
static inline int cssl_SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *list) { return (int)SSL_CTX_set1_groups_list(ctx, list); }
static inline long cssl_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_session_cache_mode(ctx, mode); }
static inline long cssl_SSL_CTX_set_read_ahead(SSL_CTX *ctx, int yes) { return SSL_CTX_set_read_ahead(ctx, yes); }
static inline int cssl_SSL_get_ex_new_index(void) { return SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL); }
static inline void cssl_BIO_set_retry_read(BIO *bio) { BIO_set_retry_read(bio); }
static inline void cssl_BIO_clear_retry_flags(BIO *bio) { BIO_clear_retry_flags(bio); }

#endif
