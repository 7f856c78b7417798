/*
 * Build-machine stand-in for Windows' bcryptprimitives.dll, for Wine 8.0 (Debian 12) only.
 *
 * Rust's standard library (1.78 and later) gets random numbers from ProcessPrng in
 * bcryptprimitives.dll, which every Windows 10 / Server 2016 and later has. Wine added it
 * in 9.0, so under Debian 12's Wine 8.0 the Rust extension modules in the exe (rpds-py, used
 * by jsonschema, and jsonschema-rs) fail to load with "DLL load failed ... Module not found".
 *
 * build_windows_exe.sh compiles this with mingw-w64 into the wine prefix's system32. It is
 * never shipped: PyInstaller does not collect DLLs from the Windows folder, and the build
 * script checks the exe does not contain it.
 */
#include <windows.h>
#include <bcrypt.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T size)
{
    while (size > 0) {
        ULONG chunk = size > 0x40000000 ? 0x40000000 : (ULONG)size;
        if (!BCRYPT_SUCCESS(BCryptGenRandom(NULL, data, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG))) {
            return FALSE;
        }
        data += chunk;
        size -= chunk;
    }
    return TRUE;
}
