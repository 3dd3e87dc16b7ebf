# deit.c build. `make` builds ./deit with OpenMP, -march=native and -fno-math-errno when the
# compiler accepts them (NO_OMP=1 turns OpenMP off, NO_NATIVE=1 drops -march=native); `make test`
# runs the tests.
# Never -ffast-math: it breaks erf/exp handling in GELU and the softmax.
CC ?= cc
CFLAGS ?= -O3 -Wall -Wextra
LDLIBS = -lm

probe = $(shell echo 'int main(void){return 0;}' | $(CC) $(1) -x c - -o /dev/null 2>/dev/null && echo yes)

ifeq ($(NO_NATIVE),)
  ifeq ($(call probe,-march=native),yes)
    ARCH = -march=native
    # Clang on an Intel AVX-512 Xeon would compile the 8 x 32 matmul tile with 256-bit vectors
    # (GCC is told so in deit.c, next to the kernel).
    ifneq ($(shell $(CC) --version 2>/dev/null | grep -c clang),0)
      ifeq ($(call probe,-Werror -mprefer-vector-width=512),yes)
        ARCH += -mprefer-vector-width=512
      endif
    endif
  endif
endif
ifeq ($(NO_OMP),)
  ifeq ($(call probe,-fopenmp),yes)
    OMP = -fopenmp
  endif
endif
# -fno-math-errno: sqrtf need not set errno, so AdamW's loop vectorizes (its step 12 -> 4 ms for
# DeiT-Ti). deit.c reads errno only after file calls.
ifeq ($(call probe,-fno-math-errno),yes)
  NOERRNO = -fno-math-errno
endif
FLAGS = $(CFLAGS) $(ARCH) $(OMP) $(NOERRNO)

.PHONY: all test debug clean check-torch
all: deit

deit: deit.c deit.h
	@echo "deit: CC=$(CC) flags: $(FLAGS) $(if $(OMP),(OpenMP on),(OpenMP off)) $(if $(ARCH),(native),(generic))"
	$(CC) $(FLAGS) deit.c $(LDLIBS) -o deit

test_deit: test_deit.c deit.c deit.h
	$(CC) $(FLAGS) test_deit.c $(LDLIBS) -o test_deit

# The test suite twice: as built, then under AddressSanitizer + UndefinedBehaviorSanitizer
# (without OpenMP, whose runtime the sanitizers do not know).
SANITIZE = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

test_deit_asan: test_deit.c deit.c deit.h
	$(CC) $(SANITIZE) -Wall -Wextra test_deit.c $(LDLIBS) -o test_deit_asan

test: deit test_deit test_deit_asan deit_debug
	./test_deit
	@echo "== again under AddressSanitizer + UndefinedBehaviorSanitizer =="
	ASAN_OPTIONS=detect_leaks=1 ./test_deit_asan
	@echo "== the README's gdb walkthrough, replayed =="
	sh dev/gdb_walkthrough.sh
	sh dev/reading_guide.sh --check
	@echo "== the README's numbers: committed checkpoints evaluated (dev/readme_commands.sh --quick) =="
	sh dev/readme_commands.sh --quick

# For gdb: -O0 -g, no OpenMP, and every product through the naive three loops of Part I
# (DEIT_MATMUL_FAST=0; --matmul fast still picks the other). Separate binaries: ./deit stays fast.
DEBUG_FLAGS = -O0 -g -Wall -Wextra -DDEIT_MATMUL_FAST=0
debug: deit_debug test_deit_debug
deit_debug: deit.c deit.h
	$(CC) $(DEBUG_FLAGS) deit.c $(LDLIBS) -o deit_debug
test_deit_debug: test_deit.c deit.c deit.h
	$(CC) $(DEBUG_FLAGS) test_deit.c $(LDLIBS) -o test_deit_debug

# Optional: deit.c against PyTorch autograd and the checkpoint converter (skips without torch).
check-torch: deit
	bash dev/check_torch.sh

clean:
	rm -f deit test_deit test_deit_asan deit_debug test_deit_debug
