#ifndef CCURL_SHIM_H
#define CCURL_SHIM_H
#include <curl/curl.h>

// curl_easy_setopt and curl_easy_getinfo are variadic, which Swift cannot call: one typed wrapper per argument
// kind the Sync module uses.

// An option taking a long (timeouts, flags, HTTP version).
static inline CURLcode ccurl_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}

// An option taking a C string (URL, CA file, request body with POSTFIELDS and POSTFIELDSIZE), which libcurl
// copies except for POSTFIELDS (kept alive by the caller until the transfer ends).
static inline CURLcode ccurl_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl_easy_setopt(handle, option, value);
}

// An option taking a pointer (a header list, the write callback's user data).
static inline CURLcode ccurl_setopt_pointer(CURL *handle, CURLoption option, void *value) {
    return curl_easy_setopt(handle, option, value);
}

// The body's write callback.
typedef size_t (*ccurl_write_callback)(char *data, size_t size, size_t count, void *user);
static inline CURLcode ccurl_setopt_write_function(CURL *handle, ccurl_write_callback callback) {
    return curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, callback);
}

// The progress callback (CURLOPT_XFERINFOFUNCTION, with CURLOPT_NOPROGRESS 0): called about once a second while
// a transfer waits, more often while data moves; a non-zero return aborts it (CURLE_ABORTED_BY_CALLBACK).
typedef int (*ccurl_xferinfo_callback)(void *user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                                       curl_off_t ulnow);
static inline CURLcode ccurl_setopt_xferinfo_function(CURL *handle, ccurl_xferinfo_callback callback) {
    return curl_easy_setopt(handle, CURLOPT_XFERINFOFUNCTION, callback);
}

// A long-valued piece of information (the response code).
static inline CURLcode ccurl_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}

#endif
