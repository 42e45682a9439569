plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
}

android {
    namespace = "dev.asppedge.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.asppedge.demo"
        minSdk = 28 // ImageDecoder
        targetSdk = 35
        versionCode = 1
        versionName = "0.1"
        testInstrumentationRunner = "androidx.test.runner.AndroidJUnitRunner"
        ndk {
            abiFilters += listOf("arm64-v8a", "x86_64")
        }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
    buildFeatures {
        viewBinding = true
    }
    androidResources {
        // LiteRT memory-maps segmenter.tflite straight from the APK (AssetManager.openFd), which works
        // only on entries stored uncompressed. segmenter.pte is copied into the app's files instead
        // (ExecuTorch's Module.load takes a path), so it may stay compressed.
        noCompress += "tflite"
    }
}

dependencies {
    implementation(libs.androidx.core.ktx)
    implementation(libs.androidx.appcompat)
    implementation(libs.androidx.activity.ktx)
    implementation(libs.material)

    // The runtimes of the Python stack: executorch==1.5.1 (.pte, XNNPACK) and LiteRT (.tflite)
    implementation(libs.executorch.android)
    implementation(libs.litert)

    implementation(libs.camera.core)
    implementation(libs.camera.camera2)
    implementation(libs.camera.lifecycle)
    implementation(libs.camera.view)

    androidTestImplementation(libs.androidx.test.ext.junit)
    androidTestImplementation(libs.androidx.test.runner)
    androidTestImplementation(libs.junit)
}
