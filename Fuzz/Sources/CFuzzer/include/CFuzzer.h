#ifndef BROKERD_CFUZZER_H
#define BROKERD_CFUZZER_H
#include <stddef.h>
#include <stdint.h>

/// libFuzzer's entry for programs with their own main (the harnesses' main is Swift's, as SwiftPM builds
/// executables). Provided by the libFuzzer runtime that `-sanitize=fuzzer` links.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
