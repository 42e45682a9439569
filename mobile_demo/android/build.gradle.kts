// Versions live in gradle/libs.versions.toml, pinned to the runtimes of the Python stack.
plugins {
    alias(libs.plugins.android.application) apply false
    alias(libs.plugins.kotlin.android) apply false
}
