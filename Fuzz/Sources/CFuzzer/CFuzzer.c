// The header declares libFuzzer's LLVMFuzzerRunDriver; this target has no code of its own.
#include "CFuzzer.h"
