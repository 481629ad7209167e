#ifndef CHATLOOP_VERSION_H
#define CHATLOOP_VERSION_H
#define CL_VERSION "0.1.0"
#endif
