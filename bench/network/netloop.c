/* netloop N PORT DNS_IP: N x (TCP connect to 127.0.0.1:PORT + close, then a
 * UDP DNS query for "bench.cilock.test" to DNS_IP:53 and its answer).
 * The connect/DNS loop of bench/network/run.py. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: netloop N PORT DNS_IP\n"); return 2; }
    long n = strtol(argv[1], NULL, 10);
    struct sockaddr_in tcp = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, "127.0.0.1", &tcp.sin_addr);
    struct sockaddr_in dns = {.sin_family = AF_INET, .sin_port = htons(53)};
    inet_pton(AF_INET, argv[3], &dns.sin_addr);
    static const unsigned char q[] = {
        0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,
        5, 'b', 'e', 'n', 'c', 'h', 6, 'c', 'i', 'l', 'o', 'c', 'k', 4, 't', 'e', 's', 't', 0,
        0, 1, 0, 1};
    unsigned char buf[512];
    for (long i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0 || connect(s, (struct sockaddr *)&tcp, sizeof tcp) != 0) { perror("connect"); return 1; }
        close(s);
        int u = socket(AF_INET, SOCK_DGRAM, 0);
        if (sendto(u, q, sizeof q, 0, (struct sockaddr *)&dns, sizeof dns) != (ssize_t)sizeof q) { perror("sendto"); return 1; }
        if (recv(u, buf, sizeof buf, 0) < 0) { perror("recv"); return 1; }
        close(u);
    }
    return 0;
}
