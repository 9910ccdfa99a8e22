/* The benchmark's guest program: COUNT 4 KiB O_DIRECT reads of DEVICE at random 4 KiB
 * offsets within its first BLOCKS blocks (xorshift64 from SEED), one at a time.
 * busybox has no random-offset reader, and a dd per request would measure fork/exec. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: random_read DEVICE COUNT BLOCKS SEED\n");
        return 2;
    }
    long count = atol(argv[2]);
    uint64_t blocks = strtoull(argv[3], NULL, 10), state = strtoull(argv[4], NULL, 10) | 1;
    int fd = open(argv[1], O_RDONLY | O_DIRECT);
    void *buffer;
    if (fd < 0 || blocks == 0 || posix_memalign(&buffer, 4096, 4096)) {
        perror("random_read");
        return 1;
    }
    for (long i = 0; i < count; i++) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if (pread(fd, buffer, 4096, (off_t)(state % blocks) * 4096) != 4096) {
            perror("random_read: pread");
            return 1;
        }
    }
    return 0;
}
