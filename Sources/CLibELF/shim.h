// CLibELF: elfutils' libelf (Debian package libelf-dev) for UnikernelBake.
#include <libelf.h>
#include <gelf.h>
