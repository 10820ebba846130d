"""A small CNN for the bundled 8x8 digits: the default model of the toolchain.

About 38k weights, so that (as in real edge models) the weights and not the file format's
fixed overhead make up most of an artifact.
"""

from .datasets import load_digits_split


def build(seed=0):
    """The untrained digits CNN: (8, 8, 1) input, 10-class softmax output."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(64, activation="relu", name="fc1")(x)
    outputs = layers.Dense(10, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def train(seed=0, epochs=8):
    """Train deterministically on the digits split; returns ``(model, test_accuracy)``."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    data = load_digits_split(seed)
    model = build(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(data["x_train"], data["y_train"], batch_size=32, epochs=epochs, shuffle=True, verbose=0)
    _, accuracy = model.evaluate(data["x_test"], data["y_test"], batch_size=256, verbose=0)
    return model, float(accuracy)
